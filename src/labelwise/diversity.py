"""Diversity on image embeddings: k-center greedy (core-set), covering radius, near duplicates, centroid distance.

All distances are Euclidean on L2-normalised embeddings, so ``||a - b||^2 = 2 - 2 cos(a, b)`` for non-zero vectors.
Pure NumPy / scikit-learn.

Speed. Exact k-center greedy needs, after every pick, the distance of every pool point to the new centre: for 8,000
picks from 80,000 448-d points that is 8,000 passes over a 143 MB matrix, memory-bound and over a minute on two cores.
`farthest_first` gets the same picks (it is exact, not an approximation) by deferring those updates: new centres
wait in a pending block and are applied to the whole pool with one matrix product per block (compute-bound BLAS-3),
while each pick only evaluates the few points whose stale score (an upper bound, since distances to the nearest
centre can only shrink) is highest. A pick is accepted once its exact score strictly beats every other point's upper
bound.

Large pools. With a GPU (``torch.cuda.is_available()``) and a pool of at least `GPU_MIN_POOL` rows, `farthest_first`
runs the same greedy in torch on the GPU (`labelwise.kcenter_torch`; same picks up to float near-ties). On the CPU,
from `APPROX_MIN_POOL` rows on, it runs a measured approximation (project-then-refine, `approximate_farthest_first`)
when the embeddings' spectrum allows it, and the exact greedy otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
from threadpoolctl import threadpool_limits  # a scikit-learn dependency

from labelwise.scaling import minmax

#: Rows per chunk of a pool-by-centres similarity product: bounds temporary memory to chunk x block floats.
_CHUNK = 16384
#: ... and values per temporary of `_nearest` (16 MB of float32), whatever the number of centres.
_CHUNK_VALUES = 1 << 22

#: Pools of at least this many rows run k-center greedy on the GPU when torch sees one. Below it the NumPy greedy
#: takes well under a second (20,000 x 1,000 picks x 448-d: about 0.2 s on one core), less than starting CUDA in a
#: fresh process and copying the pool over.
GPU_MIN_POOL = 50_000

#: On the CPU, pools of at least this many rows use `approximate_farthest_first` (when the spectrum allows it, see
#: APPROX_ENERGY). The exact greedy costs n * k * d multiply-adds: 1,000,000 x 1,000 picks x 448-d took 12.8 s on
#: one core of the 2-core reference machine (84 GFLOP/s sgemm; a second BLAS thread gained nothing there), linear in
#: both n and k, so 500,000 rows is where a batch of a few thousand starts to take minutes.
APPROX_MIN_POOL = 500_000

#: The approximation projects the centred embeddings on their leading principal components keeping this share of
#: the variance. Measured on 100,000 synthetic low-rank embeddings (k = 1,000): 95% kept the covering radius within
#: 0.3-1.5% of the exact greedy's. On embeddings without such structure (isotropic 448-d noise around clusters, where
#: 64 components keep a third of the variance) the same scheme was 4-10% worse, hence the next bound.
APPROX_ENERGY = 0.95

#: ... and only when that takes at most this fraction of the dimensions (a speed-up of at least 4x on the pool-wide
#: products); otherwise the greedy stays exact.
APPROX_MAX_RANK_FRACTION = 0.25

#: Rows the principal components are fitted on (the rows with the smallest tie keys, so the fit does not depend on
#: the order of the pool's rows).
APPROX_FIT_ROWS = 20_000


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32: ``x / ||x||``. A zero row stays zero (it has no direction)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {x.shape}")
    out = np.zeros(x.shape, dtype=np.float32)
    for start in range(0, x.shape[0], _CHUNK):  # chunked: no full-size temporary beside the result
        c = x[start:start + _CHUNK].astype(np.float32, copy=False)
        norms = np.linalg.norm(c, axis=1, keepdims=True)
        np.divide(c, norms, out=out[start:start + _CHUNK], where=norms > 0)
    return out


#: From this many values (rows x dimensions) on, `unit_rows` hands out a lazy `UnitRows` instead of a float32 copy:
#: 2**26 values are 256 MB of float32 (150,000 x 448); 1,000,000 x 448 would be 1.8 GB, twice the float16 embeddings
#: the vector store keeps, and over the memory a selection from a million may take (issue 10: 2 GB in all).
LAZY_MIN_VALUES = 1 << 26


class UnitRows:
    """The rows of an (n, d) array (float16 or float32), centred and L2-normalised when read: ``(x - centre) /
    ||x - centre||`` as float32, a chunk or a gather at a time, never the whole. Equal bit for bit to
    ``l2_normalise(x - centre)`` (the same float32 arithmetic row by row); each row's norm is computed once.

    Supports what the greedy and the selection use: ``shape``, ``len``, ``u[i]`` (a row), ``u[a:b]`` and
    ``u[rows]`` (float32 arrays). ``np.asarray(u)`` materialises the whole (what this class exists to avoid)."""

    ndim = 2
    dtype = np.dtype(np.float32)

    def __init__(self, raw: np.ndarray, centre: np.ndarray | None = None):
        if raw.ndim != 2:
            raise ValueError(f"embeddings must be a 2-D (n, d) array, got shape {raw.shape}")
        self.raw = raw
        self.centre = None if centre is None else np.asarray(centre, dtype=np.float32).reshape(-1)
        self.shape = raw.shape
        self.norms = np.empty(raw.shape[0], dtype=np.float32)
        for start in range(0, raw.shape[0], _CHUNK):
            self.norms[start:start + _CHUNK] = np.linalg.norm(self._centred(raw[start:start + _CHUNK]), axis=1)

    def __len__(self) -> int:
        return self.shape[0]

    def _centred(self, rows: np.ndarray) -> np.ndarray:
        c = rows.astype(np.float32)  # a copy, also of float32 rows
        if self.centre is not None:
            c -= self.centre
        return c

    def _unit(self, rows: np.ndarray, norms: np.ndarray) -> np.ndarray:
        c = self._centred(rows)
        n = norms[:, None]
        return np.divide(c, n, out=np.zeros_like(c), where=n > 0)

    def __getitem__(self, idx):
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            return self._unit(self.raw[i:i + 1], self.norms[i:i + 1])[0]
        if isinstance(idx, slice):
            return self._unit(self.raw[idx], self.norms[idx])
        idx = np.asarray(idx)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._unit(self.raw[idx], self.norms[idx])

    def __array__(self, dtype=None, copy=None):
        out = np.empty(self.shape, dtype=np.float32)
        for start in range(0, self.shape[0], _CHUNK):
            out[start:start + _CHUNK] = self[start:start + _CHUNK]
        return out if dtype is None else out.astype(dtype)


def unit_rows(x: np.ndarray, centre: np.ndarray | None = None) -> "np.ndarray | UnitRows":
    """``l2_normalise(x - centre)``: a float32 array, or from `LAZY_MIN_VALUES` values on a `UnitRows` (the same
    values, computed when read)."""
    if x.shape[0] * x.shape[1] >= LAZY_MIN_VALUES:
        return UnitRows(x, centre)
    if centre is None:
        return l2_normalise(x)
    return l2_normalise(np.asarray(x, dtype=np.float32) - np.asarray(centre, dtype=np.float32))


def row_sq(x) -> np.ndarray:
    """(n,) float32 squared norms of the rows of an array or a `UnitRows`, chunked."""
    if isinstance(x, np.ndarray):
        return np.einsum("ij,ij->i", x, x).astype(np.float32)
    out = np.empty(x.shape[0], dtype=np.float32)
    for start in range(0, x.shape[0], _CHUNK):
        c = x[start:start + _CHUNK]
        out[start:start + c.shape[0]] = np.einsum("ij,ij->i", c, c)
    return out


def _nearest(x: np.ndarray, x_sq: np.ndarray, centres: np.ndarray, c_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance of each row of x to its nearest centre, and that centre's index; chunked over x."""
    n = x.shape[0]
    best = np.full(n, np.inf, dtype=np.float32)
    arg = np.full(n, -1, dtype=np.int64)
    if centres.shape[0] == 0 or n == 0:
        return best, arg
    # Rows per chunk: at most _CHUNK, and at most _CHUNK_VALUES / centres values in each of the two temporaries
    # (2,000 labeled centres at 16,384 rows would be 131 MB apiece).
    step = max(1, min(_CHUNK, _CHUNK_VALUES // centres.shape[0]))
    for start in range(0, n, step):
        stop = min(n, start + step)
        # (|x|^2 + |c|^2) - 2 x.c, the same float32 arithmetic as the one-line expression, in two temporaries
        prod = x[start:stop] @ centres.T
        np.multiply(prod, 2.0, out=prod)
        d2 = np.add(x_sq[start:stop, None], c_sq[None, :])
        np.subtract(d2, prod, out=d2)
        del prod
        j = np.argmin(d2, axis=1)
        best[start:stop] = np.maximum(d2[np.arange(stop - start), j], 0.0)
        arg[start:stop] = j
    return best, arg


@dataclass
class GreedyResult:
    """What `farthest_first` picked.

    picks: pool indices in pick order. values: each pick's exact score when it was taken. distances: each pick's
    distance to its nearest centre (labeled or earlier pick) when taken. skipped: (index, nearest centre, distance)
    for points refused because they lay within `dup_distance` of a centre; a centre < 0 is labeled row ``-1 - c``.
    """

    picks: np.ndarray
    values: np.ndarray
    distances: np.ndarray
    skipped: list[tuple[int, int, float]]


class CappedDistance:
    """The diversity term of ranked batch-mode selection (Cardoso et al. 2017), a `transform` of the greedy:
    ``min(D / D0, 1)`` from ``D^2``, where D0 is the covering radius once the greedy's initial centres are in place
    (the labeled rows, or the first pick when there are none): ``D0 = max_x D(x)`` over the candidates then.

    The greedy binds D0 (`bind`) from the distances it computes anyway, so no separate pass over the pool is needed;
    the first binding holds for every later run with the same object. Before it, +inf maps to 1 (the first pick of
    a greedy without centres). Works on NumPy arrays and torch tensors.
    """

    def __init__(self) -> None:
        self.d0: float | None = None

    def bind(self, radius: float) -> None:
        if self.d0 is None:
            self.d0 = float(radius) if radius > 0 else 1.0

    def __call__(self, d2):
        return (d2 ** 0.5 / (1.0 if self.d0 is None else self.d0)).clip(max=1.0)


#: Files that exist where a GPU driver torch can use is loaded (NVIDIA; ROCm's /dev/kfd for AMD).
_GPU_DRIVER_FILES = ("/proc/driver/nvidia/version", "/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd")


def _cuda_available() -> bool:
    """torch.cuda.is_available(), without importing torch (about 400 MB and a second) on a machine that has no GPU
    driver at all."""
    import os
    import sys

    if "torch" not in sys.modules and not any(os.path.exists(f) for f in _GPU_DRIVER_FILES):
        return False
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def farthest_first(x: np.ndarray, k: int, *, device: str | None = None, approximate: bool | None = None,
                   **kwargs) -> GreedyResult:
    """Generic greedy, see `_farthest_first` for the formula and arguments.

    device: None picks: torch on "cuda" when a GPU is present and the pool has at least `GPU_MIN_POOL` rows, else
    NumPy. "numpy" forces NumPy; any other value is a torch device ("cuda", "cuda:1", "cpu") for
    `labelwise.kcenter_torch.farthest_first_torch`, the same exact greedy (same picks up to float near-ties).
    approximate: None approximates on the NumPy path from `APPROX_MIN_POOL` rows on; True / False force it (the
    approximation runs on NumPy only). The NumPy paths run BLAS on one thread: the loop is thousands of small matrix
    products, and on a loaded machine a multi-threaded BLAS spends several times longer synchronising its threads
    than computing them.
    """
    n = x.shape[0]
    if device is None:
        device = "cuda" if approximate is not True and n >= GPU_MIN_POOL and _cuda_available() else "numpy"
    if device != "numpy":
        if approximate:
            raise ValueError("the approximate greedy runs on NumPy only: give device='numpy' or approximate=False")
        from labelwise.kcenter_torch import farthest_first_torch

        return farthest_first_torch(x, k, device=device, **kwargs)
    if approximate is None:
        approximate = n >= APPROX_MIN_POOL
    with threadpool_limits(limits=1, user_api="blas"):
        if approximate:
            return approximate_farthest_first(x, k, **kwargs)
        return _farthest_first(x, k, **kwargs)


def _farthest_first(x: np.ndarray, k: int, *, labeled: np.ndarray | None = None,
                   base: np.ndarray | None = None, gain: np.ndarray | None = None,
                   transform: Callable[[np.ndarray], np.ndarray] = np.sqrt,
                   first: int | None = None, dup_distance: float | None = None,
                   tie_key: np.ndarray | None = None, block: int = 256, shortlist: int = 4096,
                   sq_norms: np.ndarray | None = None, labeled_sq_norms: np.ndarray | None = None,
                   refine: "_ExactRefiner | None" = None, candidates: np.ndarray | None = None) -> GreedyResult:
    """Generic exact greedy: repeatedly take ``argmax_x base[x] + gain[x] * transform(D(x)^2)`` where D(x) is the
    distance from x to its nearest centre (the `labeled` rows, then every earlier pick), updated after every pick.

    `x` and `labeled` must already be L2-normalised. With base = 0, gain = 1, transform = sqrt this is k-center
    greedy (Sener & Savarese 2018); with base = alpha * uncertainty it is ranked batch-mode selection (Cardoso et al.
    2017). `transform` must be non-decreasing and map +inf (no centre yet) to a finite value unless `first` is given.
    A transform with a `bind` method (`CappedDistance`) is bound to the covering radius once the initial centres
    are in place (the labeled rows, then `first`), before the first score that needs it.
    `first` forces the first pick. Points within `dup_distance` of a centre are never picked (near-duplicate
    suppression); they are reported in `skipped` when they come up. Ties go to the smallest `tie_key` (default: index).
    `candidates` (row indices; default all) restricts picks and distances to those rows, as if `x` held only them,
    without copying `x` (which may be a `UnitRows`); indices stay those of `x`.

    For `approximate_farthest_first` only: `sq_norms` / `labeled_sq_norms` replace the squared norms of the rows of
    `x` / `labeled` in ``||a - b||^2 = |a|^2 + |b|^2 - 2 a.b``, and `refine` replaces the distance of every candidate
    about to be judged by its exact one (`_ExactRefiner`).
    """
    n = x.shape[0]
    alive = np.ones(n, dtype=bool)
    if candidates is not None:
        alive[:] = False
        alive[np.asarray(candidates, dtype=np.int64)] = True
    k = min(int(k), int(alive.sum()))
    base = np.zeros(n, dtype=np.float64) if base is None else np.asarray(base, dtype=np.float64)
    gain = np.ones(n, dtype=np.float64) if gain is None else np.asarray(gain, dtype=np.float64)
    tie_key = np.arange(n) if tie_key is None else np.asarray(tie_key)
    x_sq = (row_sq(x) if sq_norms is None else np.asarray(sq_norms)).astype(np.float32)
    if labeled is not None and labeled.shape[0]:
        lab = np.asarray(labeled, dtype=np.float32)
        lab_sq = np.einsum("ij,ij->i", lab, lab) if labeled_sq_norms is None else np.asarray(labeled_sq_norms)
        d2, near = _nearest(x, x_sq, lab, lab_sq.astype(np.float32))
        near = -1 - near
    else:
        d2 = np.full(n, np.inf, dtype=np.float32)
        near = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)
    dup_d2 = None if dup_distance is None else float(dup_distance) ** 2
    picks: list[int] = []
    values: list[float] = []
    dists: list[float] = []
    skipped: list[tuple[int, int, float]] = []
    pending: list[int] = []
    # Pending centres are copied into a contiguous buffer: gathering x[pending] on every evaluation costs more than
    # the product itself.
    pending_x = np.empty((max(1, block), x.shape[1]), dtype=np.float32)

    def score(rows: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):
            return base[rows] + gain[rows] * transform(d2[rows].astype(np.float64))

    def flush() -> None:
        if not pending:
            return
        m = len(pending)
        c_d2, c_arg = _nearest(x, x_sq, pending_x[:m], x_sq[pending])
        closer = c_d2 < d2
        d2[closer] = c_d2[closer]
        near[closer] = np.asarray(pending, dtype=np.int64)[c_arg[closer]]
        pending.clear()

    def evaluate(rows: np.ndarray) -> None:
        # Brings the given rows' distances up to date with the pending centres.
        if refine is not None and rows.size:
            d2[rows], near[rows] = refine(rows)
            return
        if not pending or rows.size == 0:
            return
        cen = np.asarray(pending, dtype=np.int64)
        r_d2 = x_sq[rows, None] + x_sq[None, cen] - 2.0 * (x[rows] @ pending_x[:cen.size].T)
        j = np.argmin(r_d2, axis=1)
        r_min = np.maximum(r_d2[np.arange(rows.size), j], 0.0)
        closer = r_min < d2[rows]
        d2[rows[closer]] = r_min[closer]
        near[rows[closer]] = cen[j[closer]]

    def take(row: int, value: float) -> bool:
        alive[row] = False
        if dup_d2 is not None and d2[row] <= dup_d2:
            skipped.append((row, int(near[row]), float(np.sqrt(d2[row]))))
            return False
        picks.append(row)
        values.append(value)
        dists.append(float(np.sqrt(d2[row])))
        d2[row] = 0.0
        near[row] = row
        if refine is not None:
            refine.add(row)
        pending_x[len(pending)] = x[row]
        pending.append(row)
        if len(pending) >= block:
            flush()
        return True

    def exact_best() -> tuple[int, float]:
        flush()
        rows = np.flatnonzero(alive)
        s = score(rows)
        if refine is not None and rows.size > shortlist:  # judge the best bounds by their exact distances
            rows = rows[np.argpartition(-s, shortlist - 1)[:shortlist]]
        if refine is not None:
            evaluate(rows)
            s = score(rows)
        top = s.max()
        tied = rows[s == top]
        row = int(tied[np.argmin(tie_key[tied])])
        return row, float(top)

    if first is not None and k > 0:
        take(int(first), float(score(np.array([first]))[0]))

    bind = getattr(transform, "bind", None)
    while len(picks) < k and alive.any():
        # Shortlist of the highest upper bounds; points outside it keep a bound no larger than `outside`.
        flush()
        rows = np.flatnonzero(alive)
        if bind is not None:  # the covering radius of the initial centres
            if refine is not None:  # the largest estimates, made exact
                evaluate(rows[np.argpartition(-d2[rows], min(rows.size, 64) - 1)[:64]])
            bind(float(np.sqrt(d2[rows].max())))
            bind = None
        ub = score(rows)
        if not np.all(np.isfinite(ub)):
            raise ValueError("scores must be finite: give `labeled` or `first` when transform(inf) is infinite")
        if rows.size > shortlist:
            part = np.argpartition(-ub, shortlist - 1)
            sl, outside = rows[part[:shortlist]], float(ub[part[shortlist:]].max())
        else:
            sl, outside = rows, -np.inf
        sl_ub = score(sl)
        while len(picks) < k:
            live_pos = np.flatnonzero(alive[sl])
            if live_pos.size == 0:
                break
            t = min(32, live_pos.size)
            found = False
            while True:
                if t < live_pos.size:
                    part = np.argpartition(-sl_ub[live_pos], t - 1)
                    cand_pos = live_pos[part[:t]]
                    rest_bound = max(float(sl_ub[live_pos[part[t:]]].max()), outside)
                else:
                    cand_pos, rest_bound = live_pos, outside
                cand = sl[cand_pos]
                evaluate(cand)
                exact = score(cand)
                sl_ub[cand_pos] = exact  # now exact with respect to every centre so far
                top = float(exact.max())
                tied = cand[exact == top]
                row = int(tied[np.argmin(tie_key[tied])])
                if top > rest_bound:
                    found = True
                    break
                if t >= live_pos.size:
                    break
                t *= 2
            if not found:
                row, top = exact_best()
                take(row, top)
                break  # distances changed globally: rebuild the shortlist
            took = take(row, top)
            sl_ub[sl == row] = -np.inf
            if took and not pending:  # a flush just made every bound exact; rebuild the shortlist
                break
    return GreedyResult(np.asarray(picks, dtype=np.int64), np.asarray(values, dtype=np.float64),
                        np.asarray(dists, dtype=np.float64), skipped)


class _ExactRefiner:
    """Exact squared distance of pool rows to their nearest centre (the labeled rows, then every pick so far), for
    the approximate greedy. Cached per row: a row judged again is only compared with the centres added since."""

    def __init__(self, x: np.ndarray, labeled: np.ndarray | None, capacity: int):
        n, d = x.shape
        m = 0 if labeled is None else labeled.shape[0]
        self.x = x
        self.cen = np.empty((m + capacity, d), dtype=np.float32)
        self.cen_sq = np.empty(m + capacity, dtype=np.float32)
        self.code = np.empty(m + capacity, dtype=np.int64)  # labeled j -> -1 - j, a pick -> its pool row
        if m:
            self.cen[:m] = labeled
            self.cen_sq[:m] = np.einsum("ij,ij->i", labeled, labeled)
            self.code[:m] = -1 - np.arange(m)
        self.m = m
        self.upto = np.zeros(n, dtype=np.int64)
        self.d2 = np.full(n, np.inf, dtype=np.float32)
        self.near = np.full(n, np.iinfo(np.int64).min, dtype=np.int64)

    def add(self, row: int) -> None:
        self.cen[self.m] = self.x[row]
        self.cen_sq[self.m] = self.x[row] @ self.x[row]
        self.code[self.m] = row
        self.m += 1

    def __call__(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        upto = self.upto[rows]
        for group in (rows[upto == 0], rows[upto > 0]):
            if group.size == 0:
                continue
            lo = int(self.upto[group].min())
            if lo < self.m:
                xr = self.x[group]
                d2, j = _nearest(xr, row_sq(xr), self.cen[lo:self.m], self.cen_sq[lo:self.m])
                closer = d2 < self.d2[group]
                self.d2[group[closer]] = d2[closer]
                self.near[group[closer]] = self.code[lo + j[closer]]
                self.upto[group] = self.m
        return self.d2[rows], self.near[rows]


def principal_projection(x: np.ndarray, energy: float = APPROX_ENERGY,
                         max_rank: int | None = None, fit_rows: np.ndarray | None = None
                         ) -> tuple[np.ndarray, np.ndarray] | None:
    """(mean, P): the mean of the rows and the (d, r) leading principal axes keeping `energy` of the variance
    (PCA by the eigendecomposition of the covariance of `fit_rows`, default all rows), or None when that needs
    more than `max_rank` axes (default ``APPROX_MAX_RANK_FRACTION * d``)."""
    d = x.shape[1]
    max_rank = int(APPROX_MAX_RANK_FRACTION * d) if max_rank is None else max_rank
    sub = np.asarray(x[np.arange(x.shape[0]) if fit_rows is None else fit_rows], dtype=np.float64)
    if sub.shape[0] < 2 or max_rank < 1:
        return None
    mean = sub.mean(axis=0)
    sub = sub - mean
    w, v = np.linalg.eigh(sub.T @ sub / sub.shape[0])
    w, v = np.clip(w[::-1], 0.0, None), v[:, ::-1]
    total = w.sum()
    if total <= 0:
        return None
    r = int(np.searchsorted(np.cumsum(w) / total, energy - 1e-12)) + 1
    if r > max_rank:
        return None
    return mean.astype(np.float32), np.ascontiguousarray(v[:, :r], dtype=np.float32)


def _project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """((x - mean) @ axes, ||x - mean||^2) row by row, chunked (no full-size temporary)."""
    n = x.shape[0]
    out = np.empty((n, axes.shape[1]), dtype=np.float32)
    sq = np.empty(n, dtype=np.float32)
    for start in range(0, n, _CHUNK):
        c = np.asarray(x[start:start + _CHUNK], dtype=np.float32) - mean
        out[start:start + c.shape[0]] = c @ axes
        sq[start:start + c.shape[0]] = np.einsum("ij,ij->i", c, c)
    return out, sq


def approximate_farthest_first(x: np.ndarray, k: int, *, labeled: np.ndarray | None = None,
                               tie_key: np.ndarray | None = None, energy: float = APPROX_ENERGY,
                               candidates: np.ndarray | None = None, **kwargs) -> GreedyResult:
    """Project-then-refine approximation of `_farthest_first` (same arguments and result) for large pools.

    The pool-wide distance updates, which cost n * k * d, run on the centred embeddings projected on their leading
    principal axes (`principal_projection`, fitted on the `APPROX_FIT_ROWS` rows of smallest tie key), r << d:

        ||x - c||^2 ~= |x - mu|^2 + |c - mu|^2 - 2 (P(x - mu)).(P(c - mu)),

    the full squared norms with the inner product taken in the subspace (the part outside it is treated as
    uncorrelated noise rather than dropped, as plain projection would). Every candidate the greedy is about to judge
    is then refined: its exact distance to its nearest labeled-or-picked centre replaces the estimate, so a pick's
    reported distance, and the near-duplicate test, are exact. Falls back to the exact greedy when more than
    ``APPROX_MAX_RANK_FRACTION * d`` axes are needed for `energy` of the variance. Measured in benchmarks/RESULTS.md
    (issue 10): covering radius against the exact greedy's.
    """
    n = x.shape[0]
    key = np.arange(n) if tie_key is None else np.asarray(tie_key)
    pool = np.arange(n) if candidates is None else np.sort(np.asarray(candidates, dtype=np.int64))
    fit = np.sort(pool[np.argsort(key[pool], kind="stable")[:APPROX_FIT_ROWS]])
    proj = principal_projection(x, energy, fit_rows=fit)
    if proj is None:
        return _farthest_first(x, k, labeled=labeled, tie_key=tie_key, candidates=candidates, **kwargs)
    mean, axes = proj
    xp, sq = _project(x, mean, axes)
    lab = None
    lab_p = lab_sq = None
    if labeled is not None and labeled.shape[0]:
        lab = np.asarray(labeled, dtype=np.float32)
        lab_p, lab_sq = _project(lab, mean, axes)
    refiner = _ExactRefiner(x, lab, capacity=min(int(k), n))
    return _farthest_first(xp, k, labeled=lab_p, tie_key=tie_key, sq_norms=sq, labeled_sq_norms=lab_sq,
                           refine=refiner, candidates=candidates, **kwargs)


def central_point(x: np.ndarray, rows: np.ndarray | None = None) -> int:
    """Index of the point nearest to the normalised mean direction of `x` (ties: lowest index); with `rows`, of
    those rows only (an index of `x`). `x` may be a `UnitRows` (chunked, float64 mean).

    The deterministic start of k-center greedy without a labeled set: it does not depend on row order (unlike
    "row 0") and is a typical image rather than an outlier.
    """
    if rows is None and isinstance(x, np.ndarray):
        mean = x.mean(axis=0)
        return int(np.argmax(x @ mean)) if x.shape[0] else -1
    rows = np.arange(x.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if rows.size == 0:
        return -1
    total = np.zeros(x.shape[1], dtype=np.float64)
    for start in range(0, rows.size, _CHUNK):
        total += x[rows[start:start + _CHUNK]].sum(axis=0, dtype=np.float64)
    mean = (total / rows.size).astype(np.float32)
    best, best_row = -np.inf, -1
    for start in range(0, rows.size, _CHUNK):
        part = rows[start:start + _CHUNK]
        s = x[part] @ mean
        j = int(np.argmax(s))
        if s[j] > best:
            best, best_row = float(s[j]), int(part[j])
    return best_row


def k_center_greedy(embeddings: np.ndarray, k: int, labeled: np.ndarray | None = None, *,
                    device: str | None = None, approximate: bool | None = None) -> np.ndarray:
    """Core-set selection by k-center greedy (Sener & Savarese 2018, "Active Learning for Convolutional Neural
    Networks: A Core-Set Approach"): repeatedly take ``argmax_x min_{c in C} ||x - c||`` and add it to C, where C
    starts as the `labeled` embeddings.

    Embeddings are L2-normalised first. Returns min(k, N) distinct pool indices in selection order. Deterministic:
    without a labeled set the first pick is `central_point` (nearest the mean direction); ties go to the lowest
    index. Exact (see module docstring for how it stays fast) unless `approximate` (see `farthest_first`, which
    also explains `device`).
    """
    x = l2_normalise(embeddings)
    lab = None if labeled is None or np.asarray(labeled).shape[0] == 0 else l2_normalise(labeled)
    if k <= 0 or x.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    first = central_point(x) if lab is None else None
    return farthest_first(x, k, labeled=lab, first=first, device=device, approximate=approximate).picks


def covering_radius(embeddings: np.ndarray, centres: np.ndarray, labeled: np.ndarray | None = None) -> float:
    """Covering radius ``max_x min_{c in C} ||x - c||`` of the pool by the centres C = pool[centres] + labeled, on
    L2-normalised embeddings (the quantity k-center greedy 2-approximately minimises; Sener & Savarese 2018).

    With no centre at all the radius is +inf.
    """
    x = l2_normalise(embeddings)
    parts = [x[np.asarray(centres, dtype=np.int64)]]
    if labeled is not None and np.asarray(labeled).shape[0]:
        parts.append(l2_normalise(labeled))
    c = np.concatenate(parts) if parts else np.zeros((0, x.shape[1]), np.float32)
    if x.shape[0] == 0:
        return 0.0
    if c.shape[0] == 0:
        return float("inf")
    d2, _ = _nearest(x, np.einsum("ij,ij->i", x, x), c, np.einsum("ij,ij->i", c, c))
    return float(np.sqrt(d2.max()))


def cosine_to_distance(threshold: float) -> float:
    """Euclidean distance between unit vectors with cosine similarity `threshold`: ``sqrt(2 - 2 * threshold)``."""
    return float(np.sqrt(max(0.0, 2.0 - 2.0 * threshold)))


def near_duplicates(embeddings: np.ndarray, threshold: float = 0.98,
                    reference: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """Pairs of near-duplicate images: cosine similarity ``cos(a, b) = a.b / (|a||b|) >= threshold``.

    Without `reference`: pairs (i, j, cos) with i < j inside `embeddings`. With `reference`: pairs (i, j, cos) of
    embeddings row i and reference row j. Chunked; O(N * M) similarities.
    """
    x = l2_normalise(embeddings)
    ref = x if reference is None else l2_normalise(reference)
    out: list[tuple[int, int, float]] = []
    for start in range(0, x.shape[0], _CHUNK):
        sims = x[start:start + _CHUNK] @ ref.T
        ii, jj = np.nonzero(sims >= threshold)
        for i, j in zip(ii, jj):
            gi = start + int(i)
            if reference is None and gi >= j:
                continue
            out.append((gi, int(j), float(sims[i, j])))
    return out


def centroid_diversity(embeddings: np.ndarray, n_clusters: int = 50, seed: int = 0) -> np.ndarray:
    """The article's diversity term: distance of each image to the centroid of its own MiniBatchKMeans cluster
    (Sculley 2010 mini-batch k-means), min-max scaled to [0, 1]: ``d_i = ||x_i - mu_{c(i)}||``,
    ``(d - min d) / (max d - min d)`` (all zero when every distance is equal).

    On L2-normalised embeddings, with fixed `random_state=seed`. Kept to compare against: it rewards outliers
    within a cluster rather than coverage of the pool, and it does not change as the batch fills.
    """
    from sklearn.cluster import MiniBatchKMeans

    x = l2_normalise(embeddings)
    n = x.shape[0]
    if n == 0:
        return np.zeros(0)
    km = MiniBatchKMeans(n_clusters=max(1, min(n_clusters, n)), random_state=seed, batch_size=1024, n_init=3)
    labels = km.fit_predict(x)
    d = np.linalg.norm(x - km.cluster_centers_[labels], axis=1).astype(np.float64)
    return minmax(d)


def typicality(x: np.ndarray, n_neighbors: int = 20) -> np.ndarray:
    """TypiClust's typicality of each row among the rows of `x` (Hacohen, Dekel & Weinshall 2022, "Active Learning
    on a Budget: Opposite Strategies Suit High and Low Budgets", ICML):

        typicality(x) = ( (1/K) sum_{x_i in KNN_K(x)} ||x - x_i|| )^-1,   K = min(n_neighbors, n - 1),

    the inverse mean distance to the K nearest other rows: high in dense regions, low for outliers. A single row
    (no neighbour) gets typicality 0; identical neighbours give +inf (the densest possible).
    """
    from sklearn.neighbors import NearestNeighbors

    x = np.asarray(x, dtype=np.float32)
    n = x.shape[0]
    if n < 2:
        return np.zeros(n)
    k = min(int(n_neighbors), n - 1)
    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    mean = dist[:, 1:].mean(axis=1).astype(np.float64)  # column 0 is the row itself
    with np.errstate(divide="ignore"):
        return np.where(mean > 0, 1.0 / np.where(mean > 0, mean, 1.0), np.inf)


def typical_clusters(embeddings: np.ndarray, k: int, labeled: np.ndarray | None = None, seed: int = 0,
                     n_neighbors: int = 20, min_cluster_size: int = 5) -> np.ndarray:
    """TypiClust selection (Hacohen et al. 2022) for the low-budget regime, e.g. the first batch of a new project.

    The pool and the labeled rows (together L + N, L labeled) are clustered by k-means into ``L + k`` clusters
    (MiniBatchKMeans beyond 10,000 rows). Then k times: among clusters holding no labeled or picked row, take the
    largest (clusters under `min_cluster_size` only when no other is left), and from it the pool row of highest
    `typicality` within its cluster. Every pick is a dense, representative image of a region not yet covered,
    where k-center greedy would pick the outliers first. On L2-normalised embeddings; deterministic for a seed.
    Returns min(k, N) distinct pool indices in pick order.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans

    x = l2_normalise(embeddings)
    n = x.shape[0]
    k = min(int(k), n)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    lab = np.zeros((0, x.shape[1]), np.float32) if labeled is None else l2_normalise(labeled).reshape(-1, x.shape[1])
    both = np.concatenate([x, lab]) if lab.shape[0] else x
    n_clusters = min(both.shape[0], lab.shape[0] + k)
    if both.shape[0] > 10_000:
        km = MiniBatchKMeans(n_clusters=n_clusters, random_state=seed, batch_size=4096, n_init=3)
    else:
        km = KMeans(n_clusters=n_clusters, random_state=seed, n_init=1)
    assign = km.fit_predict(both)
    pool_cluster = assign[:n]
    covered = np.zeros(n_clusters, dtype=bool)
    covered[assign[n:]] = True
    sizes = np.bincount(assign, minlength=n_clusters)
    typical = np.zeros(n)
    members_of = [np.flatnonzero(pool_cluster == c) for c in range(n_clusters)]
    for c, members in enumerate(members_of):
        if members.size:
            typical[members] = typicality(x[members], n_neighbors)
    taken = np.zeros(n, dtype=bool)
    picks: list[int] = []
    while len(picks) < k:
        free = np.array([not covered[c] and (~taken[m]).any() for c, m in enumerate(members_of)])
        if not free.any():  # every cluster covered: start another pass over them, largest first
            covered[:] = False
            free = np.array([(~taken[m]).any() for m in members_of])
            if not free.any():
                break
        big = free & (sizes >= min_cluster_size)
        candidates = np.flatnonzero(big if big.any() else free)
        c = int(candidates[np.lexsort((candidates, -sizes[candidates]))[0]])
        members = members_of[c][~taken[members_of[c]]]
        best = members[np.lexsort((members, -typical[members]))[0]]
        picks.append(int(best))
        taken[best] = True
        covered[c] = True
    return np.asarray(picks, dtype=np.int64)
