"""Issue 8, part 2: what the cold start adds, seed by seed.

Compares the same strategy run by two simulations that differ only in `--cold-start` (e.g. benchmarks/out/syn2000/
sim-main with random, sim-coldstart with typical): mAP50 of the model trained on the initial set, and the area under
the whole learning curve, paired by seed, with Student-t 95% intervals (labelwise.savings.mean_ci).

    .venv/bin/python benchmarks/compare_cold_start.py OUT_A OUT_B [--strategy default]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from labelwise.savings import area_under_curve, mean_ci


def curves(out: Path, strategy: str) -> dict[int, tuple[list[float], list[float]]]:
    rows = json.loads((out / "results.json").read_text())["rows"]
    by_seed: dict[int, list[dict]] = {}
    for r in rows:
        if r["strategy"] == strategy:
            by_seed.setdefault(r["seed"], []).append(r)
    return {seed: ([p["n_labeled"] for p in sorted(pts, key=lambda p: p["point"])],
                   [p["map50"] for p in sorted(pts, key=lambda p: p["point"])]) for seed, pts in by_seed.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path, help="simulation folder with the baseline cold start")
    parser.add_argument("other", type=Path, help="simulation folder with the cold start to measure")
    parser.add_argument("--strategy", default="default")
    args = parser.parse_args(argv)
    a, b = curves(args.baseline, args.strategy), curves(args.other, args.strategy)
    seeds = sorted(set(a) & set(b))
    first, auc = [], []
    print("| seed | initial-set mAP50 (baseline) | initial-set mAP50 (other) | AUC baseline | AUC other | AUC difference |")
    print("|---|---|---|---|---|---|")
    for seed in seeds:
        (na, ma), (nb, mb) = a[seed], b[seed]
        lo, hi = max(na[0], nb[0]), min(na[-1], nb[-1])
        ua, ub = area_under_curve(na, ma, (lo, hi)), area_under_curve(nb, mb, (lo, hi))
        first.append(mb[0] - ma[0])
        auc.append(ub - ua)
        print(f"| {seed} | {ma[0]:.3f} | {mb[0]:.3f} | {ua:.3f} | {ub:.3f} | {ub - ua:+.3f} |")
    for name, values in (("initial-set mAP50 difference", first), ("AUC difference", auc)):
        ci = mean_ci(values)
        interval = "" if ci.low is None else f" (95% CI {ci.low:+.3f} to {ci.high:+.3f})"
        print(f"\n{name}, other - baseline, mean over {ci.n} seeds: {ci.mean:+.3f}{interval}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
