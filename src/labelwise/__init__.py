"""labelwise: active learning for object detection.

The pure core (no I/O): `uncertainty`, `diversity`, `committee`, `consistency`, `balance`, `selection`, `stopping`,
`savings`, `boxes`. The adapters: `detectors` (Ultralytics), `annotation` (folder, Label Studio, CVAT), `store`
(SQLite). The workflow: `loop.Workspace`. The CLI: `cli`.
"""

__version__ = "0.1.0"
