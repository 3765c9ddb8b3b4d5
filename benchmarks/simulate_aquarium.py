"""Benchmark: the oracle simulation on the real aquarium photographs at settings that fit a CPU (issue 5).

    .venv/bin/python benchmarks/simulate_aquarium.py [--seeds 2] [--strategies random,entropy,hybrid]

Reads the dataset in place from $LABELWISE_AQUARIUM (default ../shared/datasets/aquarium: 448 pool images, 127
validation images, 7 classes, fish:starfish about 23:1). Starts every strategy from the pretrained YOLOv8s checkpoint
of benchmarks/pretrained.py (fetched here, never committed), re-headed for the 7 classes. CPU settings: imgsz 256,
backbone frozen (freeze=10), a random initial set of 40 images, rounds of 40, epochs per round as given,
`nbs=16, warmup_epochs=1`. Evaluation is always on the fixed validation split. Writes summary.md (labels needed
to reach random's final mAP50, saving, area under the curve, AP50 of starfish, stingray and puffin, stopping rules)
and the plots to benchmarks/out/aquarium. Resumable: run it again to continue.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from labelwise.simulate import simulate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pretrained import pretrained_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default_data = Path(os.environ.get("LABELWISE_AQUARIUM") or HERE.parents[1] / "shared" / "datasets" / "aquarium")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data / "data.yaml")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "aquarium")
    parser.add_argument("--strategies", default="random,entropy,hybrid")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--initial", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--imgsz", type=int, default=256)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model = pretrained_checkpoint()
    result = simulate(args.data, args.out, args.strategies.split(","), args.seeds, initial=args.initial,
                      per_round=args.per_round, rounds=args.rounds, epochs=args.epochs, imgsz=args.imgsz,
                      model=str(model), batch=16, train_args={"freeze": 10}, progress=True)
    print(result.files["summary"].read_text())
    print(f"outputs in {result.out_dir} ({(time.perf_counter() - started) / 60:.1f} min this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
