"""The near-duplicate walk of `select` without a k x k matrix (issue 10): the same picks and skips as the
implementation it replaced (kept below, verbatim but for its name), in memory that does not grow with k squared."""

import tracemalloc

import numpy as np
import pytest

from labelwise import selection
from labelwise.detections import ScoredPool
from labelwise.selection import LabeledContext, StrategyConfig, _Batch, best_match, select


def _old_walk(self, order, need, score, comps, reason):
    """`_Batch.walk` before issue 10: it built ``xb @ xb.T`` for a whole block (max(4096, 2 * need) rows)."""
    picked = 0
    pos = 0
    thr = self.threshold
    order = order[~self.excluded[order]]
    while picked < need and pos < order.size:
        blk = order[pos:pos + max(selection._WALK_BLOCK, 2 * need)]
        pos += blk.size
        blk = blk[~self.excluded[blk]]
        if thr is None:
            for r in blk:
                if picked >= need:
                    break
                if self.excluded[r]:
                    continue
                self.add(r, score[r], comps(r), reason(r, len(self.rows) + 1))
                picked += 1
            continue
        xb = self.x[blk]
        before = list(self.rows)
        cen = self.centres()
        if cen.shape[0]:
            sims = xb @ cen.T
            best = np.argmax(sims, axis=1)
            best_sim = sims[np.arange(blk.size), best]
        else:
            best = np.zeros(blk.size, dtype=np.int64)
            best_sim = np.full(blk.size, -np.inf)
        self_sims = xb @ xb.T
        taken_here: list[int] = []
        for i, r in enumerate(blk):
            if self.excluded[r]:
                continue
            if best_sim[i] >= thr:
                self.skip(r, self.centre_name(int(best[i]), before), best_sim[i])
                continue
            if taken_here:
                s = self_sims[i, taken_here]
                j = int(np.argmax(s))
                if s[j] >= thr:
                    self.skip(r, f"pool row {int(blk[taken_here[j]])}", s[j])
                    continue
            self.add(r, score[r], comps(r), reason(r, len(self.rows) + 1))
            taken_here.append(i)
            picked += 1
            if picked >= need:
                break
    return picked


def _pool(seed: int, n: int, d: int = 24, nc: int = 4, groups: int | None = None):
    """Images in near-duplicate groups (bursts of 1-4 frames around a scene) with 0-3 scored boxes each."""
    r = np.random.default_rng(seed)
    groups = groups or n // 2
    scenes = r.normal(size=(groups, d))
    emb = scenes[r.integers(0, groups, n)] + r.choice([0.01, 0.05, 0.3], size=(n, 1)) * r.normal(size=(n, d))
    cnt = r.integers(0, 4, n)
    off = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    b = int(off[-1])
    xy = r.random((b, 2)) * 0.7
    pool = ScoredPool(np.arange(n, dtype=np.int64) * 7 + 3, emb.astype(np.float32), off,
                      r.random((b, nc)).astype(np.float32),
                      np.concatenate([xy, xy + r.random((b, 2)) * 0.3 + 0.02], 1).astype(np.float32),
                      (r.random(n) * 0.4).astype(np.float32))
    lab = LabeledContext((scenes[r.integers(0, groups, 60)] + 0.02 * r.normal(size=(60, d))).astype(np.float32),
                         r.integers(0, 30, nc).astype(np.float64))
    return pool, lab


def _both(monkeypatch, *args, **kwargs):
    new = select(*args, **kwargs)
    with monkeypatch.context() as m:
        m.setattr(_Batch, "walk", _old_walk)
        old = select(*args, **kwargs)
    return new, old


def _assert_same(new, old):
    assert new.rows.tolist() == old.rows.tolist()
    assert new.reasons == old.reasons
    assert [(r, of) for r, of, _ in new.skipped_duplicates] == [(r, of) for r, of, _ in old.skipped_duplicates]
    np.testing.assert_allclose([s for *_, s in new.skipped_duplicates], [s for *_, s in old.skipped_duplicates],
                               rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("name", ["detection_and_confusion", "random_dedup", "committee"])
def test_ranked_walk_picks_and_skips_as_before(monkeypatch, seed, name):
    pool, lab = _pool(seed, 6000)
    extra = {"members": [_pool(seed + i + 1, 6000)[0] for i in range(2)]} if name == "committee" else {}
    # k = 2,500: blocks of 5,000 candidates, several sub-blocks each; threshold low enough to skip many
    cfg = StrategyConfig(name=name, dedup_threshold=0.99, dedup_hamming=None)
    new, old = _both(monkeypatch, pool, 2500, cfg, lab if seed != 1 else None, **extra)
    _assert_same(new, old)
    assert len(new.skipped_duplicates) > 200
    assert any(of.startswith("labeled") for _, of, _ in new.skipped_duplicates) == (seed != 1)
    assert any(of.startswith("pool row") for _, of, _ in new.skipped_duplicates)


@pytest.mark.parametrize("seed", range(2))
def test_quota_centroid_and_fill_up_walks_as_before(monkeypatch, seed):
    pool, lab = _pool(seed + 10, 3000, groups=400)  # few scenes: the hybrid leaves the batch short, fill-up walks
    for cfg in (StrategyConfig(name="hybrid", diversity="centroid", dedup_threshold=0.995, dedup_hamming=None,
                               class_quotas={1: 40, 3: 300}),
                StrategyConfig(name="hybrid", dedup_threshold=0.98, dedup_hamming=None)):
        new, old = _both(monkeypatch, pool, 900, cfg, lab)
        _assert_same(new, old)


def test_best_match_is_an_exhaustive_first_max_search(monkeypatch):
    monkeypatch.setattr(selection, "_MATCH_CHUNK", 7)
    monkeypatch.setattr(selection, "_DEDUP_SUB", 5)
    r = np.random.default_rng(0)
    q = r.normal(size=(23, 6)).astype(np.float32)
    ref = r.normal(size=(40, 6)).astype(np.float32)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ref[30] = ref[3]  # a tie across chunks: the first one wins
    q[4] = ref[3]
    j, s = best_match(q, ref)
    sims = q @ ref.T
    assert j.tolist() == np.argmax(sims, axis=1).tolist()
    np.testing.assert_allclose(s, sims.max(axis=1), rtol=1e-6)
    assert j[4] == 3
    j, s = best_match(q, ref[:0])
    assert (j == 0).all() and np.isneginf(s).all()


def test_walk_memory_does_not_grow_with_k_squared():
    # 3,000 picks: the old walk's block of 6,000 candidates made a 6,000 x 6,000 float32 matrix (144 MB)
    pool, lab = _pool(4, 12_000, d=16)
    cfg = StrategyConfig(name="detection_and_confusion", dedup_threshold=0.99, dedup_hamming=None)
    tracemalloc.start()
    try:
        sel = select(pool, 3000, cfg, lab)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sel.rows) == 3000
    assert peak < 40 * 2**20, peak / 2**20
