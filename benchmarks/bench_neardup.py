"""Benchmark: near duplicates from perceptual hashes, without the detector (issue 8).

Target: pairwise recall >= 0.9 at precision >= 0.95 against the synthetic dataset's bursts.

The synthetic scenario dataset (`labelwise.synthetic.generate`) renders a share of its daylight train images as
bursts of 3-8 consecutive "video frames" of one scene (objects drift about a pixel a frame, the camera pans a
quarter pixel a frame, fresh sensor noise and exposure flicker); `scenarios.csv` records each frame's `burst_id`.
Ground truth: two train images are near duplicates iff they share a burst_id; every other pair is a true negative
(among them many pairs of different daylight scenes: bright low-saturation backgrounds of the same kind).

Every train image is hashed as ingest hashes it (`labelwise.pool.inspect_image`: decode, EXIF orientation,
pHash + dHash of the greyscale image), then for each decision rule of `labelwise.neardup.RULES` and each threshold
every pair is a predicted duplicate iff `combined_distance <= threshold` (the sum rule gets twice the threshold).
Reported per rule and threshold, counts summed over one dataset per seed: pairwise precision (predicted pairs that
are burst pairs) and recall (burst pairs predicted), each also for the worst seed; the false pairs, those between
two daylight images, and their rate among all negative pairs (the number to scale to a larger pool: false pairs grow
with the square of the pool, true ones linearly); and the images with a false match (a selection would skip them).
Then: the distance distributions of burst pairs and of different-scene daylight pairs, and the cost of hashing one
image at ingest (128 px from the dataset; 1920x1080 and 4000x3000 photographs rendered by the same generator, timed
on the decoded image and for the whole `inspect_image`).

Run: `.venv/bin/python benchmarks/bench_neardup.py [--n-train 2000] [--seeds 0,1,2] [--out DIR] [--json FILE]`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from labelwise.neardup import (  # noqa: E402
    DEFAULT_MAX_HAMMING,
    DEFAULT_RULE,
    RULES,
    combined_distance,
    nearest_hash_duplicate,
)
from labelwise.pool import ImageFile, inspect_image, perceptual_hashes  # noqa: E402
from labelwise.synthetic import ScenarioSpec, generate, read_scenarios  # noqa: E402

TARGET_RECALL, TARGET_PRECISION = 0.9, 0.95
THRESHOLDS = (0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 24)


def hash_dataset(root: Path) -> tuple[list[dict], np.ndarray, float]:
    """Scenario rows of the train images, their (N, 2) uint64 hashes as ingest computes them, and the seconds taken."""
    rows = [r for r in read_scenarios(root).values() if r["split"] == "train"]
    hashes = np.zeros((len(rows), 2), dtype=np.uint64)
    start = time.perf_counter()
    for k, row in enumerate(rows):
        found = inspect_image(root / row["file"])
        if not isinstance(found, ImageFile):
            raise RuntimeError(f"{root / row['file']}: {found.reason}")
        hashes[k] = (found.phash, found.dhash)
    return rows, hashes, time.perf_counter() - start


def pair_counts(rows: list[dict], hashes: np.ndarray) -> list[dict]:
    """Per rule and threshold, over all pairs i < j: true and false predicted pairs, and the images that have a
    predicted duplicate outside their own burst (what a selection would wrongly skip)."""
    burst = np.array([-1 if r["burst_id"] is None else r["burst_id"] for r in rows])
    daylight = np.array([r["scenario"] == "daylight" for r in rows])
    upper = np.triu_indices(len(rows), k=1)
    same = (burst[upper[0]] == burst[upper[1]]) & (burst[upper[0]] >= 0)
    both_day = daylight[upper[0]] & daylight[upper[1]]
    n_true = int(same.sum())
    out = []
    n = len(rows)
    for rule in RULES:
        d = combined_distance(hashes[:, None, :], hashes[None, :, :], rule)[upper]
        for t in THRESHOLDS:
            t_rule = 2 * t if rule == "sum" else t  # sum adds two distances: the same per-hash tolerance
            pred = d <= t_rule
            false = pred & ~same
            flagged = np.zeros(n, dtype=bool)
            flagged[upper[0][false]] = True
            flagged[upper[1][false]] = True
            out.append({
                "rule": rule, "threshold": t_rule, "tp": int((pred & same).sum()), "fp": int(false.sum()),
                "fp_daylight": int((false & both_day).sum()), "n_true_pairs": n_true,
                "n_pairs": len(same), "images_falsely_flagged": int(flagged.sum()), "n_images": n,
            })
    return out


def pool_seeds(per_seed: list[list[dict]]) -> list[dict]:
    """Sum the counts of the same (rule, threshold) over the seeds' datasets and derive the rates."""
    table = []
    for cells in zip(*per_seed, strict=True):
        row = {k: cells[0][k] for k in ("rule", "threshold")}
        for k in ("tp", "fp", "fp_daylight", "n_true_pairs", "n_pairs", "images_falsely_flagged", "n_images"):
            row[k] = sum(c[k] for c in cells)
        row["precision"] = row["tp"] / (row["tp"] + row["fp"]) if row["tp"] + row["fp"] else 1.0
        row["recall"] = row["tp"] / row["n_true_pairs"]
        row["recall_worst_seed"] = min(c["tp"] / c["n_true_pairs"] for c in cells)
        row["precision_worst_seed"] = min(c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 1.0 for c in cells)
        row["false_pair_rate"] = row["fp"] / (row["n_pairs"] - row["n_true_pairs"])
        table.append(row)
    return table


def distance_summary(rows: list[dict], hashes: np.ndarray) -> dict:
    """Percentiles of per-hash distances of burst pairs and of different daylight scenes, and the closest negatives."""
    burst = np.array([-1 if r["burst_id"] is None else r["burst_id"] for r in rows])
    daylight = np.array([r["scenario"] == "daylight" for r in rows])
    upper = np.triu_indices(len(rows), k=1)
    same = (burst[upper[0]] == burst[upper[1]]) & (burst[upper[0]] >= 0)
    day_neg = daylight[upper[0]] & daylight[upper[1]] & ~same
    out = {}
    for name, col in (("phash", 0), ("dhash", 1)):
        d = combined_distance(hashes[:, None, :], hashes[None, :, :], name)[upper]
        pos, neg = d[same], d[day_neg]
        out[name] = {
            "burst_pairs_p50_p90_p99_max": [float(np.percentile(pos, q)) for q in (50, 90, 99)] + [int(pos.max())],
            "daylight_negatives_min_p01_p1": [int(neg.min()), float(np.percentile(neg, 0.01)),
                                              float(np.percentile(neg, 1))],
        }
    both = combined_distance(hashes[:, None, :], hashes[None, :, :], "both")[upper]
    out["both_daylight_negatives_min"] = int(both[day_neg].min())
    out["both_burst_pairs_max"] = int(both[same].max())
    return out


def time_hashing(root: Path, work: Path, repeat: int = 3) -> dict:
    """Median ms per image to hash a decoded image, and for the whole inspect_image (SHA-256 + decode + hashes)."""
    out = {}
    small = sorted((root / "train" / "images").glob("*.png"))[:200]
    sizes = {"128x128 png": small}
    for name, (w, h) in {"1920x1080 jpg": (1920, 1080), "4000x3000 jpg": (4000, 3000)}.items():
        data = generate(work / f"photo{w}", ScenarioSpec(n_train=4, n_val=0, image_size=2048, seed=7,
                                                         hard_fraction=0.0, burst_fraction=0.0))
        files = []
        for k, png in enumerate(sorted((data.parent / "train" / "images").glob("*.png"))):
            path = work / f"photo{w}-{k}.jpg"
            Image.open(png).convert("RGB").resize((w, h)).save(path, quality=90)
            files.append(path)
        sizes[name] = files
    for name, files in sizes.items():
        decoded = []
        for path in files:
            with Image.open(path) as img:
                img.load()
                decoded.append(img.copy())
        hash_runs, inspect_runs = [], []
        for _ in range(repeat):
            start = time.perf_counter()
            for img in decoded:
                perceptual_hashes(img)
            hash_runs.append((time.perf_counter() - start) / len(decoded) * 1000)
            start = time.perf_counter()
            for path in files:
                inspect_image(path)
            inspect_runs.append((time.perf_counter() - start) / len(files) * 1000)
        out[name] = {"hash_ms": float(np.median(hash_runs)), "inspect_image_ms": float(np.median(inspect_runs)),
                     "images": len(files)}
    return out


def time_search(n: int = 80_000, m: int = 8_000, repeat: int = 3) -> dict:
    """Median seconds of nearest_hash_duplicate for an n-image pool against m references (random hashes: the cost
    does not depend on the values), and the peak memory it allocated."""
    import tracemalloc

    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 1 << 64, (n, 2), dtype=np.uint64, endpoint=False)
    refs = rng.integers(0, 1 << 64, (m, 2), dtype=np.uint64, endpoint=False)
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        nearest_hash_duplicate(hashes, refs)
        runs.append(time.perf_counter() - start)
    tracemalloc.start()
    nearest_hash_duplicate(hashes, refs)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return {"n": n, "m": m, "seconds": float(np.median(runs)), "peak_mb": peak / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated; one dataset per seed, counts summed")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "neardup",
                        help="where the synthetic dataset is generated (reused when it is complete)")
    parser.add_argument("--json", type=Path, help="write every number here too")
    args = parser.parse_args()

    per_seed, distances = [], {}
    for seed in (int(s) for s in args.seeds.split(",")):
        root = args.out / f"synthetic-{args.n_train}-seed{seed}"
        start = time.perf_counter()
        generate(root, ScenarioSpec(n_train=args.n_train, n_val=0, image_size=128, seed=seed))
        rows, hashes, seconds = hash_dataset(root)
        n_burst = sum(r["burst_id"] is not None for r in rows)
        print(f"seed {seed}: {root} ({time.perf_counter() - start:.1f} s); hashed {len(rows)} train images "
              f"({n_burst} burst frames) in {seconds:.1f} s (inspect_image each)")
        per_seed.append(pair_counts(rows, hashes))
        distances[seed] = distance_summary(rows, hashes)

    table = pool_seeds(per_seed)
    first = table[0]
    print(f"\n{first['n_true_pairs']} true near-duplicate pairs of {first['n_pairs']} pairs, {first['n_images']} "
          f"images ({len(per_seed)} datasets)")
    print("\n| rule | max distance | precision (worst seed) | recall (worst seed) | false pairs (daylight-daylight) "
          "| false-pair rate | images falsely flagged | target met |")
    print("|---|---|---|---|---|---|---|---|")
    for r in table:
        met = r["recall_worst_seed"] >= TARGET_RECALL and r["precision_worst_seed"] >= TARGET_PRECISION
        print(f"| {r['rule']} | {r['threshold']} | {r['precision']:.3f} ({r['precision_worst_seed']:.3f}) "
              f"| {r['recall']:.3f} ({r['recall_worst_seed']:.3f}) | {r['fp']} ({r['fp_daylight']}) "
              f"| {r['false_pair_rate']:.1e} | {r['images_falsely_flagged']} | {'yes' if met else 'no'} |")
    default = next(r for r in table if r["rule"] == DEFAULT_RULE and r["threshold"] == DEFAULT_MAX_HAMMING)
    print(f"\ndefault ({DEFAULT_RULE}, {DEFAULT_MAX_HAMMING}): precision {default['precision']:.3f}, "
          f"recall {default['recall']:.3f} (worst seed {default['recall_worst_seed']:.3f})")

    print("\ndistances:", json.dumps(distances))
    with tempfile.TemporaryDirectory() as tmp:
        timing = time_hashing(root, Path(tmp))
    print("\nhashing cost per image (median of 3):")
    for name, t in timing.items():
        print(f"  {name}: hashes {t['hash_ms']:.2f} ms, whole inspect_image {t['inspect_image_ms']:.2f} ms "
              f"({t['images']} images)")
    search = time_search()
    print(f"nearest_hash_duplicate, {search['n']:,} images x {search['m']:,} references: {search['seconds']:.2f} s "
          f"(median of 3), peak {search['peak_mb']:.0f} MB allocated")
    if args.json:
        args.json.write_text(json.dumps({"table": table, "distances": distances, "timing": timing,
                                         "search": search, "default": default}, indent=1))


if __name__ == "__main__":
    main()
