import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labelwise.diversity import (centroid_diversity, central_point, covering_radius, k_center_greedy, l2_normalise,
                                 near_duplicates)


def naive_k_center(x, k, labeled=None):
    x = l2_normalise(x).astype(np.float64)
    if labeled is None or len(labeled) == 0:
        first = central_point(l2_normalise(x))
        picks = [first]
        d = np.linalg.norm(x - x[first], axis=1)
    else:
        lab = l2_normalise(labeled).astype(np.float64)
        d = np.linalg.norm(x[:, None] - lab[None], axis=2).min(axis=1)
        picks = []
    while len(picks) < min(k, len(x)):
        i = int(np.argmax(d))
        picks.append(i)
        d = np.minimum(d, np.linalg.norm(x - x[i], axis=1))
    return np.array(picks)


@pytest.mark.parametrize("seed", range(6))
def test_k_center_greedy_matches_the_textbook_loop(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 1500))
    x = rng.normal(size=(n, 12)).astype(np.float32)
    lab = rng.normal(size=(5, 12)).astype(np.float32) if seed % 2 else None
    k = int(rng.integers(1, min(n, 400)))
    got = k_center_greedy(x, k, lab)
    want = naive_k_center(x, k, lab)
    assert len(set(got.tolist())) == len(got) == k
    # the fast path is exact; at worst a float near-tie reorders picks with the same covering radius
    assert covering_radius(x, got, lab) == pytest.approx(covering_radius(x, want, lab), rel=1e-4)
    assert (got == want).mean() > 0.9


def test_k_center_greedy_is_deterministic_and_starts_central():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    a, b = k_center_greedy(x, 40), k_center_greedy(x, 40)
    assert np.array_equal(a, b)
    assert a[0] == central_point(l2_normalise(x))


def test_k_center_greedy_never_repeats_and_returns_whole_pool_when_k_is_large():
    x = np.repeat(np.eye(3, dtype=np.float32), 4, axis=0)  # exact duplicates everywhere
    got = k_center_greedy(x, 50)
    assert sorted(got.tolist()) == list(range(12))


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 60), st.integers(2, 10), st.booleans())
def test_covering_radius_never_grows_with_k(seed, n, d, with_labeled):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    lab = rng.normal(size=(3, d)).astype(np.float32) if with_labeled else None
    radii = [covering_radius(x, k_center_greedy(x, k, lab), lab) for k in range(1, n + 1)]
    assert all(b <= a + 1e-6 for a, b in zip(radii, radii[1:]))
    assert radii[-1] == pytest.approx(0.0, abs=1e-3)


def test_covering_radius_by_hand():
    x = np.array([[1, 0], [0, 1], [-1, 0]], np.float32)
    assert covering_radius(x, np.array([0])) == pytest.approx(2.0)
    assert covering_radius(x, np.array([1])) == pytest.approx(np.sqrt(2))
    assert covering_radius(x, np.array([], dtype=np.int64)) == float("inf")


def test_near_duplicates_by_cosine():
    x = np.array([[1, 0], [0.999, 0.02], [0, 1], [0, 2]], np.float32)
    pairs = {(i, j) for i, j, _ in near_duplicates(x, 0.98)}
    assert pairs == {(0, 1), (2, 3)}
    ref = np.array([[0, 5]], np.float32)
    assert {(i, j) for i, j, _ in near_duplicates(x, 0.98, ref)} == {(2, 0), (3, 0)}


def test_centroid_diversity_is_scaled_and_reproducible():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 6))
    a, b = centroid_diversity(x, 5, seed=1), centroid_diversity(x, 5, seed=1)
    assert np.array_equal(a, b)
    assert a.min() == pytest.approx(0.0) and a.max() == pytest.approx(1.0)
