"""Issue 3, in the loop: per strategy, how many hard and rare images its FIRST model-driven batch holds, against random.

Run: .venv/bin/python benchmarks/bench_first_batch.py   (--quick: a small smoke run, numbers meaningless)

What it does, on a real Ultralytics YOLO (from yolo11n.yaml, CPU):
1. generates the synthetic scenario dataset (labelwise.synthetic; hard = night/occluded/crowded scenes, rare = an image
   holding a ring or a diamond, the two rare classes);
2. makes a workspace, picks a random seed batch (round 1) and imports its labels from the dataset (the oracle);
3. trains round 2's model on the seed batch and scores the pool once (the plain pass), both timed;
4. from the SAME model and scores, lets every strategy pick the first batch (`Workspace.select(k, strategy=...)`;
   re-selecting within a round returns the previous picks to the pool), plus two rare-class variants;
5. counts hard and rare images in each batch; random's expectation is exact (k times the pool's share: the mean over
   every possible seed, i.e. random averaged over all seeds), with the hypergeometric standard deviation, and the
   loop's own random draw is listed as well;
6. times the committee's extra passes (N bootstrap members trained + N pool passes) and the consistency flip pass
   against the plain train + score.

Prints a Markdown table (paste it into benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
import time
from pathlib import Path

from labelwise.loop import Workspace
from labelwise.selection import STRATEGIES
from labelwise.synthetic import ScenarioSpec, generate, read_scenarios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (96 images, 64 px, 1 epoch)")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-val", type=int, default=60)
    ap.add_argument("--imgsz", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=12)
    ap.add_argument("--k", type=int, default=40, help="seed batch size and first-batch size")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="yolo11n.yaml", help="start checkpoint or model YAML (e.g. a pretrained .pt)")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the dataset and workspace here")
    args = ap.parse_args()
    if args.quick:
        args.n_train, args.n_val, args.imgsz, args.epochs, args.k = 96, 16, 64, 1, 8

    work = args.workdir or Path(tempfile.mkdtemp(prefix="lw-first-batch-"))
    scenes = work / "scenes"
    spec = ScenarioSpec(n_train=args.n_train, n_val=args.n_val, image_size=args.imgsz, seed=args.seed)
    generate(scenes, spec)
    truth = read_scenarios(scenes)
    ws_root = work / "ws"
    shutil.rmtree(ws_root, ignore_errors=True)
    ws = Workspace.create(ws_root, images=[scenes / "train" / "images"], data_yaml=scenes / "data.yaml",
                          model=args.model, imgsz=args.imgsz, seed=args.seed,
                          train={"epochs": args.epochs, "batch": 16},
                          budget={"per_round": args.k, "initial": args.k}, stopping={"rule": "none"})
    ws.ingest_sources(progress=False)
    ws.run(oracle=scenes / "train" / "labels", rounds=1)  # round 1: the random seed batch, labeled by the oracle

    t0 = time.perf_counter()
    ws.train()
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ws.score(progress=False)
    score_s = time.perf_counter() - t0
    current = ws.store.current_round()
    round_no = current.round

    def flags(image_id: int) -> tuple[bool, bool]:
        row = truth[str(ws.store.image(image_id).path.relative_to(scenes))]
        return row["hard"], row["rare"]

    pool_ids = [int(i) for i in ws.store.image_ids("pool", "unlabeled")]
    n_pool = len(pool_ids)
    n_hard = sum(flags(i)[0] for i in pool_ids)
    n_rare = sum(flags(i)[1] for i in pool_ids)
    k = min(args.k, n_pool)

    def expectation(successes: int) -> tuple[float, float]:
        p = successes / n_pool
        var = k * p * (1 - p) * (n_pool - k) / max(n_pool - 1, 1)
        return k * p, math.sqrt(var)

    exp_hard, sd_hard = expectation(n_hard)
    exp_rare, sd_rare = expectation(n_rare)

    # Extra passes, timed on their own before the selections that use them (select finds them cached).
    t0 = time.perf_counter()
    ws._extra_passes(round_no, {"name": "committee"}, progress=False)
    committee_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    ws._extra_passes(round_no, {"name": "consistency"}, progress=False)
    flip_s = time.perf_counter() - t0

    variants: list[tuple[str, str | dict]] = [(name, name) for name in STRATEGIES]
    variants += [
        ("detection_and_confusion + rare_class_weight", {"name": "detection_and_confusion", "rare_class_weight": True}),
        ("hybrid + rare weight + quotas {ring: 2, diamond: 2}",
         {"name": "hybrid", "rare_class_weight": True, "class_quotas": {4: 2, 5: 2}}),
    ]
    rows = []
    for label, strategy in variants:
        t0 = time.perf_counter()
        picks = ws.select(k=k, strategy=strategy)
        sel_s = time.perf_counter() - t0
        ids = [p["image_id"] for p in picks]
        hard = sum(flags(i)[0] for i in ids)
        rare = sum(flags(i)[1] for i in ids)
        empty = sum(1 for p in picks if p["components"].get("n_boxes", 1) == 0)
        skipped = len(ws.store.duplicate_skips(round_no))
        rows.append((label, len(ids), hard, rare, empty, skipped, sel_s))

    cores = "2-core CPU"
    print(f"\npool: {n_pool} unlabeled images ({n_hard} hard, {n_rare} rare), {ws.store.counts()['pool_labeled']} "
          f"labeled (seed), k = {k}; model: {args.model}, {args.epochs} epochs at imgsz {args.imgsz}; "
          f"round-2 mAP50 {current.map50:.3f}")
    print(f"random expectation (all seeds): hard {exp_hard:.2f} +- {sd_hard:.2f}, rare {exp_rare:.2f} +- {sd_rare:.2f}"
          f" (hypergeometric sd)\n")
    print("| strategy | picked | hard | rare | hard vs random | rare vs random | empty (no box kept) "
          "| skipped as near-dup | select time |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| random, expectation over all seeds | {k} | {exp_hard:.1f} | {exp_rare:.1f} | 1.00 | 1.00 | | | |")
    for label, n, hard, rare, empty, skipped, sel_s in rows:
        print(f"| {label} | {n} | {hard} | {rare} | {hard / exp_hard if exp_hard else float('nan'):.2f} | "
              f"{rare / exp_rare if exp_rare else float('nan'):.2f} | {empty} | {skipped} | {sel_s:.2f} s |")
    plain = train_s + score_s
    print(f"\nplain pass: train {train_s:.1f} s + score {score_s:.1f} s = {plain:.1f} s ({cores})")
    print(f"committee extra (3 members x {max(1, args.epochs // 3)} epochs on bootstrap resamples + 3 pool passes): "
          f"{committee_s:.1f} s = {committee_s / plain:.2f} x the plain pass")
    print(f"consistency extra (one flipped pool pass): {flip_s:.1f} s = {flip_s / plain:.2f} x the plain pass")
    print(json.dumps({"train_s": train_s, "score_s": score_s, "committee_s": committee_s, "flip_s": flip_s,
                      "rows": rows, "expected": [exp_hard, exp_rare]}))
    print(f"\nworkspace kept in {work}")


if __name__ == "__main__":
    main()
