"""Benchmark for issue 3: select 8,000 of 80,000 448-d embeddings with `coreset` and `hybrid`.

Run: .venv/bin/python benchmarks/bench_selection.py   (add --quick for a 20,000 / 2,000 smoke run)

Each strategy runs in its own subprocess, so peak RSS is its own. Reported per strategy: wall time of `select`,
peak extra RSS over the process after the pool was built (ru_maxrss delta), peak traced allocation (tracemalloc),
and the covering radius of the batch. Then an exactness check on a smaller case: the fast k-center greedy against
the textbook loop (every distance updated after every pick). Threads are capped at 2 (the target machine's cores).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from labelwise.detections import ScoredPool  # noqa: E402
from labelwise.diversity import central_point, covering_radius, k_center_greedy, l2_normalise  # noqa: E402
from labelwise.selection import LabeledContext, StrategyConfig, select  # noqa: E402

DIM, N_CLASSES = 448, 8


def synthetic_pool(n: int, seed: int = 0) -> ScoredPool:
    """Clustered non-negative embeddings (like pooled ReLU features) and 0-5 boxes per image with sigmoid scores."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(300, DIM)).astype(np.float32)
    emb = centres[rng.integers(0, 300, n)] + 0.8 * rng.normal(size=(n, DIM)).astype(np.float32)
    np.maximum(emb, 0, out=emb)
    counts = rng.integers(0, 6, n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    b = int(offsets[-1])
    xy = rng.random((b, 2), dtype=np.float32) * 0.8
    wh = rng.random((b, 2), dtype=np.float32) * 0.2 + 0.01
    scores = (1 / (1 + np.exp(-rng.normal(-2, 2, size=(b, N_CLASSES))))).astype(np.float32)
    return ScoredPool(np.arange(n, dtype=np.int64), emb, offsets, scores, np.concatenate([xy, xy + wh], 1),
                      rng.random(n, dtype=np.float32) * 0.3)


def run_one(strategy: str, n: int, k: int, n_labeled: int) -> dict:
    pool = synthetic_pool(n)
    rng = np.random.default_rng(1)
    labeled = LabeledContext(pool.embeddings[rng.choice(n, n_labeled, replace=False)] + 0.01,
                             rng.integers(0, 500, N_CLASSES).astype(np.float64))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    t0 = time.perf_counter()
    sel = select(pool, k, StrategyConfig(name=strategy), labeled)
    wall = time.perf_counter() - t0
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "strategy": strategy, "n": n, "k": k, "labeled": n_labeled, "picked": int(len(sel.rows)),
        "distinct": int(len(set(sel.rows.tolist()))), "skipped_duplicates": len(sel.skipped_duplicates),
        "seconds": round(wall, 2), "peak_extra_rss_mib": round((rss_after - rss_before) / 1024, 1),
        "peak_traced_mib": round(traced_peak / 2**20, 1),
        "covering_radius": round(covering_radius(pool.embeddings, sel.rows, labeled.embeddings), 4),
    }


def textbook_k_center(x: np.ndarray, k: int) -> np.ndarray:
    x = l2_normalise(x)
    first = central_point(x)
    picks = [first]
    d2 = np.maximum(2 - 2 * (x @ x[first]), 0)
    while len(picks) < k:
        i = int(np.argmax(d2))
        picks.append(i)
        d2 = np.minimum(d2, np.maximum(2 - 2 * (x @ x[i]), 0))
    return np.array(picks)


def exactness(n: int = 10_000, k: int = 1_000) -> dict:
    x = synthetic_pool(n, seed=3).embeddings
    t0 = time.perf_counter()
    fast = k_center_greedy(x, k)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = textbook_k_center(x, k)
    t_slow = time.perf_counter() - t0
    r_fast, r_slow = covering_radius(x, fast), covering_radius(x, slow)
    return {"n": n, "k": k, "same_picks_fraction": float((fast == slow).mean()),
            "radius_fast": round(r_fast, 5), "radius_textbook": round(r_slow, 5),
            "radius_ratio": round(r_fast / r_slow, 5), "seconds_fast": round(t_fast, 2),
            "seconds_textbook": round(t_slow, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n, k, m = (20_000, 2_000, 1_000) if args.quick else (80_000, 8_000, 2_000)
    if args.one:
        print(json.dumps(run_one(args.one, n, k, m)))
        return
    results = []
    for strategy in ("coreset", "hybrid"):
        cmd = [sys.executable, __file__, "--one", strategy] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        print(json.dumps(results[-1]), flush=True)
    ex = exactness(*((3_000, 300) if args.quick else (10_000, 1_000)))
    print(json.dumps({"exactness": ex}), flush=True)
    ok = all(r["seconds"] <= 60 and r["peak_extra_rss_mib"] < 2048 and r["picked"] == r["distinct"] == k
             for r in results)
    print("PASS" if ok else "FAIL")


if __name__ == "__main__":
    main()
