"""GPU check for issue 10: k-center greedy in torch on CUDA against the NumPy greedy, and its speed on a million.

Run on a CUDA machine (the project's CI has none):

    PYTHONPATH=src python3 benchmarks/gpu_kcenter.py --out OUT_DIR [--n 1000000]

1. Same picks: on 100,000 synthetic 448-d embeddings (the generator of bench_million.py), k-center greedy (k = 1,000)
   and the generic greedy with a base score, gains, a capped distance, near-duplicate suppression and tie keys
   (what `hybrid` runs) on CUDA against NumPy's exact greedy: how many picks agree, position by position.
2. Speed: k-center greedy of k = 1,000 and 8,000 from n (default 1,000,000) on CUDA, copy to the GPU included,
   and the NumPy exact greedy of k = 1,000 on the same n on one core of this machine for comparison.

Writes gpu_kcenter.json and prints it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))


def embeddings(n: int, seed: int = 0, d: int = 448) -> np.ndarray:
    from bench_million import synthetic_embeddings

    return synthetic_embeddings(n, seed=seed, d=d)[0].astype(np.float32)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--skip-numpy-large", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)

    import torch

    from labelwise.diversity import _farthest_first, central_point, covering_radius, farthest_first, l2_normalise

    report: dict = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "numpy": np.__version__,
                    "python": platform.python_version(), "cpus": len(os.sched_getaffinity(0)),
                    "date": time.strftime("%Y-%m-%d")}

    def sync():
        torch.cuda.synchronize()

    # warm CUDA up (context start is a one-off per process, reported separately)
    t = time.perf_counter()
    torch.zeros(1, device="cuda")
    sync()
    report["cuda_init_s"] = round(time.perf_counter() - t, 2)

    # 1. same picks on 100,000
    x = l2_normalise(embeddings(100_000, seed=1))
    first = central_point(x)
    t = time.perf_counter()
    g = farthest_first(x, 1000, first=first, device="cuda")
    t_gpu = time.perf_counter() - t
    t = time.perf_counter()
    c = _farthest_first(x, 1000, first=first)
    t_cpu = time.perf_counter() - t
    agree = int(np.sum(g.picks == c.picks))
    first_diff = int(np.argmax(g.picks != c.picks)) if agree < len(c.picks) else None
    gap = None
    if first_diff is not None:  # how near a tie the first disagreement is, in float64 on the common prefix
        cen = x[c.picks[:first_diff]].astype(np.float64)
        dist = [float(np.sqrt(((x[p].astype(np.float64) - cen) ** 2).sum(1).min()))
                for p in (g.picks[first_diff], c.picks[first_diff])]
        gap = {"distance_gpu_pick": dist[0], "distance_numpy_pick": dist[1], "difference": dist[0] - dist[1]}
    report["same_picks_kcenter_100k"] = {
        "k": 1000, "agree_positions": agree, "first_difference": first_diff, "tie_at_first_difference": gap,
        "same_set": len(set(g.picks.tolist()) & set(c.picks.tolist())),
        "radius_gpu": covering_radius(x, g.picks), "radius_numpy": covering_radius(x, c.picks),
        "gpu_s": round(t_gpu, 3), "numpy_s": round(t_cpu, 3)}
    rng = np.random.default_rng(5)
    n = x.shape[0]
    base = 0.7 * rng.random(n)
    gain = rng.choice([1.0, 2.0], n)

    def capped(d2):
        return (d2 ** 0.5 / 1.2).clip(max=1.0)

    lab = x[rng.choice(n, 300, replace=False)]
    kw = dict(labeled=lab, base=base, gain=gain, transform=capped, dup_distance=0.1,
              tie_key=rng.permutation(n).astype(np.uint64))
    g = farthest_first(x, 1000, device="cuda", **kw)
    c = _farthest_first(x, 1000, **kw)
    agree = int(np.sum(g.picks == c.picks))
    report["same_picks_generic_100k"] = {
        "k": 1000, "agree_positions": agree,
        "first_difference": int(np.argmax(g.picks != c.picks)) if agree < len(c.picks) else None,
        "skipped_gpu": len(g.skipped), "skipped_numpy": len(c.skipped),
        "max_value_diff": float(np.max(np.abs(g.values - c.values))) if agree == len(c.picks) else None}
    print(json.dumps(report, indent=1), flush=True)

    # 2. speed on n
    x = l2_normalise(embeddings(args.n, seed=0))
    first = central_point(x)
    speed = {"n": args.n}
    for k in (1000, 8000):
        t = time.perf_counter()
        g = farthest_first(x, k, first=first, device="cuda")
        sync()
        speed[f"cuda_k{k}_s"] = round(time.perf_counter() - t, 2)
    if not args.skip_numpy_large:
        t = time.perf_counter()
        c = farthest_first(x, 1000, first=first, device="numpy", approximate=False)
        speed["numpy_exact_k1000_s"] = round(time.perf_counter() - t, 2)
        speed["numpy_equal_to_cuda_k1000_prefix"] = int(np.sum(np.cumprod(c.picks == g.picks[:1000])))
    report["speed"] = speed
    text = json.dumps(report, indent=1)
    print(text)
    (args.out / "gpu_kcenter.json").write_text(text + "\n")


if __name__ == "__main__":
    main()
