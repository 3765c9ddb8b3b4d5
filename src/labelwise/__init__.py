"""labelwise: active learning for object detection.

The pure core (no I/O): `uncertainty`, `diversity`, `committee`, `consistency`, `balance`, `selection`, `stopping`,
`savings`, `boxes`. The adapters: `detectors` (Ultralytics), `annotation` (folder, Label Studio, CVAT), `store`
(SQLite). The workflow: `loop.Workspace`. The CLI: `cli`.
"""

__version__ = "0.1.0"

from labelwise.cores import prefer_passive_waiting

# Before anything loads torch (its OpenMP runtime reads the setting once, when it loads): torch's threads then
# sleep instead of spinning while they wait, which is what lets labelwise share a machine. A value the user set
# wins. See cores.prefer_passive_waiting for the measurement.
prefer_passive_waiting()
