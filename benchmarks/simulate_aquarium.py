"""Benchmark: the oracle simulation on the real aquarium photographs at settings that fit a CPU (issue 5).

    .venv/bin/python benchmarks/simulate_aquarium.py [--seeds 2] [--strategies random,article,default]
        [--full-pool] [--cold-start random] [--variants ablations.yaml] [--model CKPT] [--train-arg KEY=VALUE]

Reads the dataset in place from $LABELWISE_AQUARIUM (default ../shared/datasets/aquarium: 448 pool images, 127
validation images, 7 classes, fish:starfish about 23:1). Starts every strategy from the pretrained YOLOv8s checkpoint
of benchmarks/pretrained.py (fetched here, never committed), re-headed for the 7 classes, unless --model names
another. CPU settings: imgsz 256, backbone frozen (freeze=10, replaced by any --train-arg), an initial set of 40
images (chosen by --cold-start, shared by a seed's strategies), rounds of 40, epochs per round as given,
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

from labelwise.selection import COLD_STARTS
from labelwise.simulate import parse_train_args, read_variants, simulate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pretrained import pretrained_checkpoint  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    default_data = Path(os.environ.get("LABELWISE_AQUARIUM") or HERE.parents[1] / "shared" / "datasets" / "aquarium")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data / "data.yaml")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "aquarium")
    parser.add_argument("--strategies", default="random,article,default",
                        help="Strategy names, preset names or --variants labels, comma separated.")
    parser.add_argument("--variants", type=Path, help="YAML: label -> strategy mapping (ablations); all run.")
    parser.add_argument("--model", help="Checkpoint every run starts from (default: the re-headed YOLOv8s).")
    parser.add_argument("--train-arg", action="append", default=None, metavar="KEY=VALUE",
                        help="Extra Ultralytics train argument (repeatable; default freeze=10).")
    parser.add_argument("--cold-start", default="random", choices=COLD_STARTS,
                        help="How every strategy's initial set is chosen (shared by a seed's strategies).")
    parser.add_argument("--full-pool", action="store_true", help="Also train once on the whole pool (reference).")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--initial", type=int, default=40)
    parser.add_argument("--per-round", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--imgsz", type=int, default=256)
    args = parser.parse_args(argv)
    started = time.perf_counter()
    model = args.model or str(pretrained_checkpoint())
    train_args = parse_train_args(args.train_arg) if args.train_arg is not None else {"freeze": 10}
    result = simulate(args.data, args.out, args.strategies.split(","), args.seeds, initial=args.initial,
                      per_round=args.per_round, rounds=args.rounds, epochs=args.epochs, imgsz=args.imgsz,
                      model=model, batch=16, train_args=train_args, cold_start=args.cold_start,
                      full_pool=args.full_pool, variants=read_variants(args.variants) if args.variants else None,
                      progress=True)
    print(result.files["summary"].read_text())
    print(f"outputs in {result.out_dir} ({(time.perf_counter() - started) / 60:.1f} min this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
