"""The workflow floor: one module per step of a round, each a few plain functions over a `WorkspaceContext`
(the workspace's root, labelwise.yaml, store and detector).

It sits between the adapters (store, detectors, annotation backends) and the Python API (`labelwise.loop.Workspace`,
a thin facade) and the CLI. Modules here import the core and the adapters, and each other only downwards:

    context     the shared state, LoopError, crash_point, which round and step come next
    ingest      add images and labels
    training    the round's dataset, training, start weights
    scoring     the pool's inference (plain, mirrored, committee) and the agreement with the previous model
    selecting   the selection inputs, the core's selection, the saved batch
    annotating  the batch, the backend, export / import / pull
    status      where the loop stands, stop advice, the reason to stop
    rounds      the state machine: step and run

No module here imports `labelwise.loop`; `loop` imports them. Nothing is imported here eagerly, so importing one
step does not import the others.
"""
