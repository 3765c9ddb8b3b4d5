"""neardup.HashIndex (issue 10): multi-index hashing finds exactly what a full comparison finds."""

import numpy as np
import pytest

from labelwise.neardup import RULES, HashIndex, nearest_hash_duplicate


def _hashes(seed: int, n: int = 3000) -> np.ndarray:
    """Random hash rows, a third of them near copies (a few bits flipped in each column) of another row."""
    r = np.random.default_rng(seed)
    h = r.integers(0, 2**63, size=(n, 2), dtype=np.int64).view(np.uint64) * np.uint64(2) + \
        r.integers(0, 2, size=(n, 2)).astype(np.uint64)
    src = r.integers(0, n, n // 3)
    for i, s in zip(range(n - n // 3, n), src):
        row = h[s].copy()
        for col in (0, 1):
            for bit in r.choice(64, int(r.integers(0, 12)), replace=False):
                row[col] ^= np.uint64(1) << np.uint64(bit)
        h[i] = row
    return h


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("max_distance", [0, 3, 8, 13, 70])
def test_within_and_nearest_equal_a_full_comparison(rule, max_distance):
    h = _hashes(max_distance * 7 + len(rule))
    index = HashIndex(h, max_distance, rule)
    for q in (0, 5, 2500, 2999):
        rows, dist = index.within(h[q])
        of, full = nearest_hash_duplicate(h, h[q:q + 1], max_distance, rule)
        assert rows.tolist() == np.flatnonzero(of >= 0).tolist()
        assert dist.tolist() == full[rows].tolist()
    refs = h[np.random.default_rng(1).choice(len(h), 200, replace=False)]
    refs[:5] = refs[5:10]  # equal references: the lowest row wins
    got_of, got_d = index.nearest(refs)
    want_of, want_d = nearest_hash_duplicate(h, refs, max_distance, rule)
    assert got_of.tolist() == want_of.tolist()
    hit = want_of >= 0
    assert got_d[hit].tolist() == want_d[hit].tolist()
    assert (got_d[~hit] == -1).all()


def test_empty_index_and_refs():
    empty = HashIndex(np.zeros((0, 2), np.uint64), 8)
    assert empty.within(np.zeros(2, np.uint64))[0].size == 0
    h = _hashes(0, 50)
    of, d = HashIndex(h, 8).nearest(np.zeros((0, 2), np.uint64))
    assert (of == -1).all() and (d == -1).all()
