"""Benchmark: the oracle simulation on the built-in synthetic scenario dataset, at CPU settings (issue 5).

One command reproduces the synthetic table of benchmarks/RESULTS.md:

    .venv/bin/python benchmarks/simulate_synthetic.py

It generates the default synthetic dataset (`ScenarioSpec()`: 400 pool images, 100 validation images, 128 px,
20% hard scenes, 40% near-duplicate bursts, two rare classes at 3% of the objects each) under
benchmarks/out/synthetic/data, then runs `labelwise.simulate.simulate` into benchmarks/out/synthetic/sim:
yolo11n from `yolo11n.yaml` (no download), imgsz 128, 10 epochs per round warm-started from the previous round,
batch 16, a random initial set of 20 images, then 7 rounds of 20 (final budget 160 images, 40% of the pool, where
random sampling is still climbing), 3 seeds, strategies random, least_confidence, entropy, coreset, hybrid and
uncertainty_then_diverse. The outputs are summary.md (the table), results.csv/json and the two figures.

Time: about 4 min per strategy and seed on an idle 2-core CPU (training ~2 s per epoch per 100 images at 128 px,
plus a scoring pass over the pool each round), so about 75 min for the default 6 strategies x 3 seeds; 2-3 times
that on a shared, loaded machine. Resumable: stop it at any time and run the same command again; finished rounds
are kept. Add strategies (committee about doubles a run's time, consistency adds a second scoring pass) with
--strategies; more seeds with --seeds.

`--smoke` runs the same pipeline at toy settings (2 strategies, 1 seed, 64 px, 1 epoch, 3 small rounds, a 60-image
pool) in about 2 minutes, to check the set-up before the long run; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labelwise.simulate import simulate
from labelwise.synthetic import ScenarioSpec, generate

HERE = Path(__file__).resolve().parent
DEFAULT_STRATEGIES = "random,least_confidence,entropy,coreset,hybrid,uncertainty_then_diverse"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "out" / "synthetic",
                        help="Folder for the dataset and the simulation (default: benchmarks/out/synthetic).")
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--initial", type=int, default=20)
    parser.add_argument("--per-round", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=8, help="Labeled batches, the initial one included.")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--smoke", action="store_true", help="Toy settings, about 2 minutes: checks the set-up.")
    args = parser.parse_args(argv)

    if args.smoke:
        spec = ScenarioSpec(n_train=60, n_val=16, image_size=64, seed=0)
        work = args.work.with_name(args.work.name + "-smoke")
        settings = dict(strategies=["random", "entropy"], seeds=1, initial=8, per_round=8, rounds=3, epochs=1,
                        imgsz=64, batch=8)
    else:
        spec = ScenarioSpec()
        work = args.work
        settings = dict(strategies=args.strategies.split(","), seeds=args.seeds, initial=args.initial,
                        per_round=args.per_round, rounds=args.rounds, epochs=args.epochs, imgsz=args.imgsz,
                        batch=16)
    started = time.perf_counter()
    data_yaml = generate(work / "data", spec, progress=True)
    strategies = settings.pop("strategies")
    seeds = settings.pop("seeds")
    result = simulate(data_yaml, work / "sim", strategies, seeds, model="yolo11n.yaml", progress=True, **settings)
    print(result.files["summary"].read_text())
    print(f"outputs in {result.out_dir} ({(time.perf_counter() - started) / 60:.1f} min this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
