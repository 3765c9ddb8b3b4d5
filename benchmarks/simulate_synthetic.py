"""Benchmark: the oracle simulation on the built-in synthetic scenario dataset, at CPU settings (issues 5 and 8).

One command reproduces the synthetic table of benchmarks/RESULTS.md:

    .venv/bin/python benchmarks/simulate_synthetic.py --full-pool        # issue 8's main table (5 seeds)
    .venv/bin/python benchmarks/simulate_synthetic.py --strategies random,default --seeds 3 \
        --variants benchmarks/ablation.yaml                               # its ablation

It generates the synthetic dataset (`ScenarioSpec(n_train=--n-train, n_val=200)`: by default a pool of 2,000
images, 200 validation images, 128 px, 20% hard scenes, 40% near-duplicate bursts, two rare classes at 3% of the
objects each) under WORK/data-n<N>, then runs `labelwise.simulate.simulate` into WORK/sim-n<N>: `--model` (default:
the pretrained YOLOv8s of benchmarks/pretrained.py, fetched here; `yolo11n.yaml` trains from scratch), imgsz 128,
backbone frozen (`freeze=10`, replaced by any --train-arg), 5 epochs per round warm-started from the previous round,
batch 16, an initial set of 100 images chosen by `--cold-start` (the same for every strategy of a seed), then 4
rounds of 50, 5 seeds, strategies random, article and default (presets; plain strategy names and `--variants`
labels work too).
`--full-pool` also trains once on the whole pool (the reference for "labels to 90% / 95% of full pool").
The outputs are summary.md (the tables), results.csv/json and the two figures.

Time: about 4 min per strategy and seed on an idle 2-core CPU at 400 images (training ~2 s per epoch per 100
images at 128 px, plus a scoring pass over the pool each round, which grows with the pool: about 5x longer at
2,000), 2-3 times that on a shared, loaded machine. Resumable: stop it at any time and run the same command
again; finished rounds are kept. More strategies with --strategies, more seeds with --seeds.

`--smoke` runs the same pipeline at toy settings (2 strategies, 1 seed, 64 px, 1 epoch, 3 small rounds, a 60-image
pool) in about 2 minutes, to check the set-up before the long run; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from labelwise.selection import COLD_STARTS
from labelwise.simulate import parse_train_args, read_variants, simulate
from labelwise.synthetic import ScenarioSpec, generate

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from pretrained import pretrained_checkpoint  # noqa: E402
DEFAULT_STRATEGIES = "random,article,default"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=HERE / "out" / "synthetic",
                        help="Folder for the dataset and the simulation (default: benchmarks/out/synthetic).")
    parser.add_argument("--strategies", default=DEFAULT_STRATEGIES,
                        help="Strategy names, preset names or --variants labels, comma separated.")
    parser.add_argument("--variants", type=Path, help="YAML: label -> strategy mapping (ablations); all run.")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--n-train", type=int, default=2000, help="Pool images to generate (default 2000).")
    parser.add_argument("--initial", type=int, default=100)
    parser.add_argument("--per-round", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5, help="Labeled batches, the initial one included.")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--imgsz", type=int, default=128)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--model", help="Checkpoint or model YAML every run starts from (default: the pretrained "
                                        "checkpoint of benchmarks/pretrained.py).")
    parser.add_argument("--train-arg", action="append", default=None, metavar="KEY=VALUE",
                        help="Extra Ultralytics train argument (repeatable; default freeze=10).")
    parser.add_argument("--cold-start", default="random", choices=COLD_STARTS,
                        help="How every strategy's initial set is chosen (shared by a seed's strategies).")
    parser.add_argument("--full-pool", action="store_true", help="Also train once on the whole pool (reference).")
    parser.add_argument("--smoke", action="store_true", help="Toy settings, about 2 minutes: checks the set-up.")
    args = parser.parse_args(argv)

    train_args = parse_train_args(args.train_arg) if args.train_arg is not None else (
        {} if args.smoke else {"freeze": 10})
    model = args.model or ("yolo11n.yaml" if args.smoke else str(pretrained_checkpoint()))
    common = dict(model=model, train_args=train_args, cold_start=args.cold_start,
                  full_pool=args.full_pool, variants=read_variants(args.variants) if args.variants else None)
    if args.smoke:
        spec = ScenarioSpec(n_train=60, n_val=16, image_size=64, seed=0)
        work = args.work.with_name(args.work.name + "-smoke")
        settings = dict(strategies=["random", "coreset"], seeds=1, initial=8, per_round=8, rounds=3, epochs=1,
                        imgsz=64, batch=8)
    else:
        spec = ScenarioSpec(n_train=args.n_train, n_val=200)
        work = args.work
        settings = dict(strategies=args.strategies.split(","), seeds=args.seeds, initial=args.initial,
                        per_round=args.per_round, rounds=args.rounds, epochs=args.epochs, imgsz=args.imgsz,
                        batch=args.batch)
    started = time.perf_counter()
    data_yaml = generate(work / f"data-n{spec.n_train}", spec, progress=True)
    strategies = settings.pop("strategies")
    seeds = settings.pop("seeds")
    result = simulate(data_yaml, work / f"sim-n{spec.n_train}", strategies, seeds, progress=True, **settings,
                      **common)
    print(result.files["summary"].read_text())
    print(f"outputs in {result.out_dir} ({(time.perf_counter() - started) / 60:.1f} min this run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
