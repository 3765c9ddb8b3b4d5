"""Issue 8, part 1 (a quick proxy before whole simulations): what each measure and aggregation picks from ONE
trained model.

Builds (once, under WORK) a workspace on a synthetic dataset from the pretrained checkpoint of
benchmarks/pretrained.py: a random initial 100 labeled by the oracle, the model trained on them (5 epochs at 128 px,
`freeze=10`, as the issue-8 simulations) and the pool scored. Then, on a copy, it re-selects round 2's batch of 50
with each configuration through `Workspace.select` (so the inputs are exactly the loop's), counting hard / rare /
burst images and the scenarios of the picks against the pool's shares.

    .venv/bin/python benchmarks/probe_first_batch.py DATASET [WORK]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections import Counter
from pathlib import Path

from labelwise.loop import Workspace

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrained import pretrained_checkpoint  # noqa: E402
from labelwise.presets import PRESETS
from labelwise.synthetic import read_scenarios

CONFIGURATIONS = {
    "random": {"name": "random"},
    "article": PRESETS["article"],
    "labelwise 0.1 (normalised least confidence, max)": {"name": "softmax_least_confidence", "aggregation": "max",
                                                         "box_threshold": 0.0, "min_evidence": 0.0},
    "detection_and_confusion, sum": {"name": "detection_and_confusion", "aggregation": "sum"},
    "detection_and_confusion, max": {"name": "detection_and_confusion", "aggregation": "max"},
    "detection_and_confusion, mean of top 3": {"name": "detection_and_confusion", "aggregation": "mean_top_n"},
    "detection_and_confusion, mean": {"name": "detection_and_confusion", "aggregation": "mean"},
    "hybrid (the default)": PRESETS["default"],
    "coreset": {"name": "coreset"},
}


def build(root: Path, dataset: Path) -> Path:
    if (root / "labelwise.yaml").exists():
        return root
    ws = Workspace.create(root, images=[dataset / "train" / "images"], data_yaml=dataset / "data.yaml",
                          model=str(pretrained_checkpoint()), imgsz=128,
                          train={"epochs": 5, "batch": 16, "extra": {"freeze": 10}},
                          budget={"initial": 100, "per_round": 50}, strategy={"cold_start": "random"},
                          stopping={"rule": "none"})
    ws.ingest_sources(progress=False)
    ws.run(oracle=dataset / "train" / "labels", rounds=1)  # the random initial batch, labeled
    ws.train()
    ws.score(progress=False)
    ws.store.close()
    return root


def main(argv: list[str]) -> int:
    dataset = Path(argv[0]).resolve()
    work = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "out" / "probe"
    source = build(work / "ws", dataset)
    scenarios = read_scenarios(dataset)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ws"
        shutil.copytree(source, root, symlinks=True)
        ws = Workspace(root)

        def facts(image_id: int) -> dict:
            return scenarios[str(Path(ws.store.image(image_id).path).resolve().relative_to(dataset))]

        pool = [facts(int(i)) for i in ws.store.image_ids("pool", "unlabeled")]
        pool += [facts(int(i)) for i in ws.store.image_ids("pool", "selected")]
        share = {key: sum(bool(p[key]) for p in pool) / len(pool) for key in ("hard", "rare")}
        bursts = sum(p["burst_id"] is not None for p in pool) / len(pool)
        print(f"pool {len(pool)}: hard {share['hard']:.0%}, rare {share['rare']:.0%}, burst frames {bursts:.0%}, "
              f"{dict(Counter(p['scenario'] for p in pool))}")
        for label, strategy in CONFIGURATIONS.items():
            picks = [facts(r["image_id"]) for r in ws.select(k=50, strategy=dict(strategy))]
            n = len(picks)
            print(f"{label}: hard {sum(p['hard'] for p in picks) / n:.0%}, rare {sum(p['rare'] for p in picks) / n:.0%}, "
                  f"burst frames {sum(p['burst_id'] is not None for p in picks) / n:.0%}, "
                  f"{dict(Counter(p['scenario'] for p in picks))}")
        ws.store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
