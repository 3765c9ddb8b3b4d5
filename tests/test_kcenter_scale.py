"""k-center greedy for large pools (issue 10): the torch implementation (GPU) against NumPy, the dispatch, and the
CPU approximation (project-then-refine) against the exact greedy."""

import numpy as np
import pytest

from labelwise import diversity
from labelwise.diversity import (
    _farthest_first,
    approximate_farthest_first,
    central_point,
    covering_radius,
    farthest_first,
    k_center_greedy,
    l2_normalise,
    principal_projection,
)

torch = pytest.importorskip("torch")
from labelwise.kcenter_torch import farthest_first_torch  # noqa: E402


def _case(seed: int, n: int = 1500, d: int = 24):
    rng = np.random.default_rng(seed)
    x = l2_normalise(np.abs(rng.normal(size=(n, d))) + rng.normal(size=(1, d)))
    lab = l2_normalise(rng.normal(size=(int(rng.integers(1, 40)), d))) if seed % 2 else None
    return rng, x, lab


def _same(a, b):
    # float32 |a|^2 + |b|^2 - 2 a.b cancels for close pairs: absolute error ~1e-6 in d^2, ~1e-5 in d near 0.02
    assert a.picks.tolist() == b.picks.tolist()
    np.testing.assert_allclose(a.values, b.values, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-5, atol=1e-4)
    assert [(r, c) for r, c, _ in a.skipped] == [(r, c) for r, c, _ in b.skipped]
    np.testing.assert_allclose([s for *_, s in a.skipped], [s for *_, s in b.skipped], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("seed", range(6))
def test_torch_k_center_greedy_equals_numpy(seed):
    rng, x, lab = _case(seed)
    k = int(rng.integers(1, 300))
    first = None if lab is not None else central_point(x)
    _same(farthest_first_torch(x, k, device="cpu", labeled=lab, first=first),
          _farthest_first(x, k, labeled=lab, first=first))


@pytest.mark.parametrize("seed", range(4))
def test_torch_generic_greedy_equals_numpy_with_base_gain_duplicates_and_tie_keys(seed):
    rng, x, lab = _case(seed, n=1200)
    # near-copies (distance about 0.02) for the near-duplicate test; exact copies would sit at a squared distance of
    # float rounding noise (~1e-7, different between BLAS libraries) and turn their order into a coin toss
    x[::7] = l2_normalise(x[1::7][: x[::7].shape[0]] + 0.004 * rng.normal(size=(x[::7].shape[0], x.shape[1])))
    n = x.shape[0]
    base = 0.7 * rng.random(n)
    gain = rng.choice([1.0, 2.0], n)
    d0 = 1.3

    def capped(d2):
        return (d2 ** 0.5 / d0).clip(max=1.0)

    tie_key = rng.permutation(n).astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    kw = dict(labeled=lab, base=base, gain=gain, transform=capped, dup_distance=0.25, tie_key=tie_key,
              first=None if lab is not None else int(np.argmax(base)))
    got = farthest_first_torch(x, 1000, device="cpu", **kw)
    want = _farthest_first(x, 1000, **kw)
    _same(got, want)
    assert want.skipped  # the case exercises near-duplicate suppression


def test_torch_greedy_refuses_infinite_scores_like_numpy():
    x = l2_normalise(np.random.default_rng(0).normal(size=(20, 4)))
    with pytest.raises(ValueError, match="finite"):
        _farthest_first(x, 3)
    with pytest.raises(ValueError, match="finite"):
        farthest_first_torch(x, 3, device="cpu")


def test_dispatch_uses_the_gpu_for_large_pools_only(monkeypatch):
    import labelwise.kcenter_torch as kt

    calls = []

    def fake(x, k, *, device, **kw):
        calls.append(device)
        return farthest_first_torch(x, k, device="cpu", **kw)

    monkeypatch.setattr(kt, "farthest_first_torch", fake)
    monkeypatch.setattr(diversity, "_cuda_available", lambda: True)
    monkeypatch.setattr(diversity, "GPU_MIN_POOL", 500)
    x = l2_normalise(np.random.default_rng(1).normal(size=(600, 8)))
    big = farthest_first(x, 20, first=0)
    small = farthest_first(x[:400], 20, first=0)
    assert calls == ["cuda"]
    assert big.picks.tolist() == _farthest_first(x, 20, first=0).picks.tolist()
    assert small.picks.tolist() == _farthest_first(x[:400], 20, first=0).picks.tolist()
    farthest_first(x, 5, first=0, device="numpy")
    assert calls == ["cuda"]
    monkeypatch.setattr(diversity, "_cuda_available", lambda: False)
    farthest_first(x, 5, first=0)
    assert calls == ["cuda"]
    with pytest.raises(ValueError, match="NumPy only"):
        farthest_first(x, 5, first=0, device="cuda", approximate=True)


def _low_rank(n: int, d: int = 96, rank: int = 10, seed: int = 0) -> np.ndarray:
    """Embeddings with a few strong directions and a weak isotropic floor (like pooled CNN features)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, rank)) * (np.arange(1, rank + 1) ** -0.5) + rng.normal(size=(7, rank))[rng.integers(0, 7, n)]
    return l2_normalise(np.maximum(z @ rng.normal(size=(rank, d)) + 0.15 * rng.normal(size=(n, d)), 0))


@pytest.mark.parametrize("with_labeled", [False, True])
def test_approximation_covers_within_five_percent_of_exact(with_labeled):
    x = _low_rank(20_000)
    lab = _low_rank(50, seed=9) if with_labeled else None
    first = None if with_labeled else central_point(x)
    assert principal_projection(x) is not None  # the approximation really runs
    exact = _farthest_first(x, 300, labeled=lab, first=first)
    approx = approximate_farthest_first(x, 300, labeled=lab, first=first)
    assert len(set(approx.picks.tolist())) == 300
    ratio = covering_radius(x, approx.picks, lab) / covering_radius(x, exact.picks, lab)
    assert ratio < 1.05
    # every pick's reported distance is exact (refined), not the projected estimate
    cen = [lab] if lab is not None else []
    for i, (p, dist) in enumerate(zip(approx.picks[:60], approx.distances[:60])):
        c = np.concatenate(cen + [x[approx.picks[:i]]]) if (cen or i) else np.zeros((0, x.shape[1]))
        want = np.sqrt(((x[p] - c) ** 2).sum(1).min()) if c.shape[0] else np.inf
        assert dist == pytest.approx(want, abs=1e-5)


def test_approximation_falls_back_to_exact_without_low_rank_structure():
    x = l2_normalise(np.random.default_rng(2).normal(size=(3000, 64)))
    assert principal_projection(x) is None
    a = approximate_farthest_first(x, 50, first=0)
    b = _farthest_first(x, 50, first=0)
    assert a.picks.tolist() == b.picks.tolist()


def test_approximation_keeps_near_duplicate_suppression_exact():
    x = _low_rank(6000, seed=3)
    x[1::2] = l2_normalise(x[::2] + 1e-4)  # every other row a near-copy of its neighbour
    res = approximate_farthest_first(x, 400, first=central_point(x), dup_distance=0.05)
    picked = x[res.picks]
    sims = picked @ picked.T
    np.fill_diagonal(sims, -1)
    assert sims.max() < 1 - 0.05 ** 2 / 2  # no two picks within the duplicate distance


def test_large_pools_approximate_on_cpu_by_default(monkeypatch):
    seen = []
    real = diversity.approximate_farthest_first
    monkeypatch.setattr(diversity, "approximate_farthest_first", lambda *a, **kw: seen.append(1) or real(*a, **kw))
    monkeypatch.setattr(diversity, "_cuda_available", lambda: False)
    monkeypatch.setattr(diversity, "APPROX_MIN_POOL", 2000)
    x = _low_rank(2500)
    k_center_greedy(x, 10)
    assert seen == [1]
    k_center_greedy(x[:1999], 10)
    k_center_greedy(x, 10, approximate=False)
    assert seen == [1]


@pytest.mark.parametrize("with_labeled", [True, False])
def test_capped_distance_binds_the_initial_covering_radius_on_numpy_and_torch(with_labeled):
    from labelwise.diversity import CappedDistance

    rng, x, _ = _case(11, n=900)
    lab = l2_normalise(rng.normal(size=(30, x.shape[1]))) if with_labeled else None
    base = 0.7 * rng.random(x.shape[0])
    first = None if with_labeled else int(np.argmax(base))
    x64 = x.astype(np.float64)
    if with_labeled:
        want = np.sqrt(((x64[:, None] - lab.astype(np.float64)[None]) ** 2).sum(2).min(1).max())
    else:
        want = np.sqrt(((x64 - x64[first]) ** 2).sum(1).max())
    got = {}
    for name, run in (("numpy", _farthest_first), ("torch", lambda *a, **kw: farthest_first_torch(*a, device="cpu", **kw))):
        t = CappedDistance()
        got[name] = run(x, 200, labeled=lab, base=base, gain=np.full(x.shape[0], 0.3), transform=t, first=first)
        assert t.d0 == pytest.approx(want, rel=1e-5)
        assert t(np.array([np.inf, 0.0, t.d0 ** 2 / 4])).tolist() == pytest.approx([1.0, 0.0, 0.5])
    _same(got["torch"], got["numpy"])
