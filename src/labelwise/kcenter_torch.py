"""k-center greedy in torch, for a GPU: the same generic greedy as `labelwise.diversity._farthest_first`.

Formula (see `diversity._farthest_first`): repeatedly take ``argmax_x base[x] + gain[x] * transform(D(x)^2)``, D(x)
the Euclidean distance from x to its nearest centre (the `labeled` rows, then every earlier pick), ties to the
smallest `tie_key`; with base = 0, gain = 1, transform = sqrt it is k-center greedy (Sener & Savarese 2018, "Active
Learning for Convolutional Neural Networks: A Core-Set Approach"), with base = alpha * uncertainty ranked batch-mode
selection (Cardoso et al. 2017).

On a GPU the plain loop is the fast one: after every pick one matrix-vector product updates every distance (1,000,000
x 448 floats, 1.8 GB read at some TB/s: well under a millisecond), and the argmax is one reduction; no shortlist or
deferred block is needed. Squared distances are float32, ``|x|^2 + |c|^2 - 2 x.c`` clipped at 0 as in NumPy (the
squared norms are computed by NumPy and copied over), scores float64, so the picks equal NumPy's up to float
near-ties (cuBLAS and OpenBLAS round a dot product differently). TF32 is switched off for the products.

Imported lazily by `diversity.farthest_first`: the pure core does not import torch.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import numpy as np
import torch

from labelwise.diversity import GreedyResult

#: Pool rows times centres per chunk when the pool's distance to the labeled rows is computed (bounds the temporary
#: to 64 MB of float32 whatever the size of the labeled set).
_CHUNK_ELEMENTS = 1 << 24


@contextmanager
def _ieee_matmul():
    """float32 products in full float32 (no TF32), restored afterwards."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def _tie_rank(tie_key: np.ndarray) -> np.ndarray:
    """Rank of each key (0 = smallest), as int64: torch has no general uint64 comparisons."""
    rank = np.empty(tie_key.shape[0], dtype=np.int64)
    rank[np.argsort(tie_key, kind="stable")] = np.arange(tie_key.shape[0])
    return rank


def farthest_first_torch(x: np.ndarray, k: int, *, device: str = "cuda", labeled: np.ndarray | None = None,
                         base: np.ndarray | None = None, gain: np.ndarray | None = None,
                         transform: Callable = np.sqrt, first: int | None = None,
                         dup_distance: float | None = None, tie_key: np.ndarray | None = None,
                         candidates: np.ndarray | None = None, **_ignored) -> GreedyResult:
    """`diversity._farthest_first` in torch on `device` (same arguments and result; `block` and `shortlist`, the
    NumPy implementation's tuning, are ignored). `transform` is np.sqrt or a function of a torch tensor (written with
    operators and tensor methods, e.g. ``(d2 ** 0.5 / d0).clip(max=1.0)``, which works on both)."""
    from labelwise.diversity import _CHUNK, row_sq

    n = x.shape[0]
    alive_np = np.ones(n, dtype=bool)
    if candidates is not None:
        alive_np[:] = False
        alive_np[np.asarray(candidates, dtype=np.int64)] = True
    k = min(int(k), int(alive_np.sum()))
    dev = torch.device(device)
    x_sq_np = row_sq(x)
    fn = torch.sqrt if transform is np.sqrt else transform
    rank_np = _tie_rank(np.arange(n) if tie_key is None else np.asarray(tie_key))
    with _ieee_matmul(), torch.no_grad():
        X = torch.empty((n, x.shape[1]), dtype=torch.float32, device=dev)
        for start in range(0, n, _CHUNK):  # chunk by chunk: `x` may be a diversity.UnitRows
            X[start:start + _CHUNK] = torch.from_numpy(np.ascontiguousarray(x[start:start + _CHUNK],
                                                                            dtype=np.float32)).to(dev)
        x_sq = torch.from_numpy(x_sq_np).to(dev)
        base_t = torch.zeros(n, dtype=torch.float64, device=dev) if base is None else \
            torch.from_numpy(np.asarray(base, dtype=np.float64)).to(dev)
        gain_t = torch.ones(n, dtype=torch.float64, device=dev) if gain is None else \
            torch.from_numpy(np.asarray(gain, dtype=np.float64)).to(dev)
        rank = torch.from_numpy(rank_np).to(dev)
        big = torch.tensor(np.iinfo(np.int64).max, dtype=torch.int64, device=dev)
        neg_inf = torch.tensor(-np.inf, dtype=torch.float64, device=dev)
        if labeled is not None and labeled.shape[0]:
            lab_np = np.ascontiguousarray(labeled, dtype=np.float32)
            lab = torch.from_numpy(lab_np).to(dev)
            lab_sq = torch.from_numpy(np.einsum("ij,ij->i", lab_np, lab_np).astype(np.float32)).to(dev)
            d2 = torch.empty(n, dtype=torch.float32, device=dev)
            near = torch.empty(n, dtype=torch.int64, device=dev)
            step = max(1, _CHUNK_ELEMENTS // lab.shape[0])
            for start in range(0, n, step):
                stop = min(n, start + step)
                c = x_sq[start:stop, None] + lab_sq[None, :] - 2.0 * (X[start:stop] @ lab.T)
                j = torch.argmin(c, dim=1)
                d2[start:stop] = c.gather(1, j[:, None])[:, 0].clamp_min(0.0)
                near[start:stop] = -1 - j
        else:
            d2 = torch.full((n,), float("inf"), dtype=torch.float32, device=dev)
            near = torch.full((n,), np.iinfo(np.int64).min, dtype=torch.int64, device=dev)
        alive = torch.from_numpy(alive_np).to(dev)
        n_alive = int(alive_np.sum())
        dup_d2 = None if dup_distance is None else float(dup_distance) ** 2
        picks: list[int] = []
        values: list[float] = []
        dists: list[float] = []
        skipped: list[tuple[int, int, float]] = []

        def take(row: int, value: float, d2_row: float) -> None:
            nonlocal d2, near, n_alive
            alive[row] = False
            n_alive -= 1
            dist = float(np.sqrt(np.float32(d2_row)))
            if dup_d2 is not None and d2_row <= dup_d2:
                skipped.append((row, int(near[row].item()), dist))
                return
            picks.append(row)
            values.append(value)
            dists.append(dist)
            c = (x_sq + x_sq[row] - 2.0 * (X @ X[row])).clamp_min(0.0)
            closer = c < d2
            d2 = torch.where(closer, c, d2)
            near = torch.where(closer, torch.tensor(row, dtype=torch.int64, device=dev), near)
            d2[row] = 0.0
            near[row] = row

        if first is not None and k > 0:
            s = base_t[first] + gain_t[first] * fn(d2[first:first + 1].double())[0]
            take(int(first), float(s.item()), float(d2[first].item()))

        bind = getattr(transform, "bind", None)
        while len(picks) < k and n_alive > 0:
            if bind is not None:  # the covering radius of the initial centres (see diversity.CappedDistance)
                bind(float(np.sqrt(np.float32(torch.where(alive, d2, 0.0).max().item()))))
                bind = None
            s = base_t + gain_t * fn(d2.double())
            bad = (~torch.isfinite(s) & alive).any()
            s = torch.where(alive, s, neg_inf)
            top = s.max()
            row = torch.where((s == top) & alive, rank, big).argmin()
            row_i, top_f, d2_row, bad_f = torch.stack([row.double(), top, d2[row].double(), bad.double()]).tolist()
            if bad_f:
                raise ValueError("scores must be finite: give `labeled` or `first` when transform(inf) is infinite")
            take(int(row_i), top_f, d2_row)
    return GreedyResult(np.asarray(picks, dtype=np.int64), np.asarray(values, dtype=np.float64),
                        np.asarray(dists, dtype=np.float64), skipped)
