"""Selection from a large pool without a float32 copy of its embeddings (issue 10): diversity.UnitRows normalises
rows when they are read, and `select` gives the same batch with it as with the normalised array."""

import numpy as np
import pytest

from labelwise import diversity
from labelwise.detections import ScoredPool
from labelwise.diversity import UnitRows, central_point, l2_normalise, row_sq, unit_rows
from labelwise.selection import LabeledContext, StrategyConfig, select


def _raw(seed=0, n=5000, d=24):
    r = np.random.default_rng(seed)
    raw = np.abs(r.normal(size=(n, d)) + 2).astype(np.float16)
    raw[7] = 0  # a zero row stays zero
    return raw, (raw.astype(np.float64).mean(axis=0) + 0.01).astype(np.float32)


def test_unit_rows_equal_the_normalised_array_bit_for_bit(monkeypatch):
    monkeypatch.setattr(diversity, "_CHUNK", 777)  # chunks that do not divide the rows
    raw, centre = _raw()
    want = l2_normalise(raw.astype(np.float32) - centre)
    u = UnitRows(raw, centre)
    assert u.shape == want.shape and len(u) == len(want)
    assert np.array_equal(u[3], want[3]) and np.array_equal(u[np.int64(9)], want[9])
    assert np.array_equal(u[100:2000], want[100:2000])
    rows = np.array([4999, 0, 7, 7, 1234])
    assert np.array_equal(u[rows], want[rows])
    mask = np.zeros(len(raw), bool)
    mask[::3] = True
    assert np.array_equal(u[mask], want[mask])
    assert np.array_equal(np.asarray(u), want)
    assert np.array_equal(row_sq(u), row_sq(want))
    assert central_point(u) == central_point(want)
    sub = np.arange(0, 5000, 2)
    assert central_point(u, sub) == sub[central_point(want[sub])]
    plain = UnitRows(raw)
    assert np.array_equal(plain[10:20], l2_normalise(raw[10:20]))


def test_unit_rows_is_lazy_only_for_large_arrays(monkeypatch):
    raw, centre = _raw(n=100)
    assert isinstance(unit_rows(raw, centre), np.ndarray)
    monkeypatch.setattr(diversity, "LAZY_MIN_VALUES", 100)
    assert isinstance(unit_rows(raw, centre), UnitRows)


def _pool(seed=0, n=4000, d=24, nc=4):
    r = np.random.default_rng(seed)
    raw, centre = _raw(seed, n, d)
    raw[n - 300:] = raw[:300]  # near-duplicates by embedding
    cnt = r.integers(0, 4, n)
    off = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    b = int(off[-1])
    xy = r.random((b, 2)) * 0.7
    hashes = r.integers(0, 2**63, size=(n, 2)).astype(np.uint64)
    hashes[n - 600:n - 300] = hashes[:300]  # near-duplicates by perceptual hash
    pool = ScoredPool(np.arange(n, dtype=np.int64) * 5 + 1, raw, off, r.random((b, nc)).astype(np.float32),
                      np.concatenate([xy, xy + r.random((b, 2)) * 0.3 + 0.02], 1).astype(np.float32),
                      (r.random(n) * 0.4).astype(np.float32), hashes)
    lab = LabeledContext(raw[300:340].astype(np.float32) * 1.01, r.integers(0, 30, nc).astype(np.float64),
                         hashes[400:440])
    return pool, lab, centre


@pytest.mark.parametrize("name,with_labeled", [("hybrid", True), ("hybrid", False), ("coreset", False),
                                                ("coreset", True), ("detection_and_confusion", True),
                                                ("uncertainty_then_diverse", True)])
def test_select_on_unit_rows_equals_select_on_the_array(monkeypatch, name, with_labeled):
    pool, lab, centre = _pool()
    cfg = StrategyConfig(name=name, dedup_threshold=0.99, min_evidence=0.0)
    args = (pool, 600, cfg, lab if with_labeled else None)
    eager = select(*args, centre=centre)
    monkeypatch.setattr(diversity, "LAZY_MIN_VALUES", 1)
    lazy = select(*args, centre=centre)
    assert lazy.rows.tolist() == eager.rows.tolist()
    assert lazy.reasons == eager.reasons
    assert [(r, of) for r, of, _ in lazy.skipped_duplicates] == [(r, of) for r, of, _ in eager.skipped_duplicates]
    assert any("hash" in of for _, of, _ in eager.skipped_duplicates)


def test_centre_is_what_the_workflow_subtracted_before(monkeypatch):
    pool, lab, centre = _pool(1)
    cfg = StrategyConfig(name="hybrid", dedup_threshold=0.99)
    new = select(pool, 300, cfg, lab, centre=centre)
    import dataclasses
    old_pool = dataclasses.replace(pool, embeddings=pool.embeddings.astype(np.float32) - centre)
    old_lab = dataclasses.replace(lab, embeddings=lab.embeddings - centre)
    old = select(old_pool, 300, cfg, old_lab)
    assert new.rows.tolist() == old.rows.tolist() and new.reasons == old.reasons
