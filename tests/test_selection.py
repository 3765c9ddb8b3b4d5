import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from labelwise.detections import ScoredPool
from labelwise.diversity import covering_radius, k_center_greedy
from labelwise.selection import STRATEGIES, LabeledContext, StrategyConfig, select

NC = 4


def random_pool(seed, n=40, d=8, nc=NC, dup_pairs=0):
    r = np.random.default_rng(seed)
    cnt = r.integers(0, 4, n)
    off = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    b = int(off[-1])
    xy = r.random((b, 2)) * 0.7
    wh = r.random((b, 2)) * 0.3 + 0.02
    emb = r.normal(size=(n, d)).astype(np.float32)
    for i in range(min(dup_pairs, n // 2)):
        emb[n - 1 - i] = emb[i] * 1.5 + 1e-4  # same direction: cosine ~1
    return ScoredPool(np.arange(n, dtype=np.int64) * 3 + 11, emb, off, r.random((b, nc)).astype(np.float32),
                      np.concatenate([xy, xy + wh], 1).astype(np.float32), (r.random(n) * 0.4).astype(np.float32))


def permute(pool, perm):
    return pool.subset(perm)


def extras_for(name, pool, seed):
    if name == "committee":
        return {"members": [random_pool(seed + i + 1, n=len(pool), d=pool.embeddings.shape[1]) for i in range(3)]}
    if name == "consistency":
        return {"flipped": random_pool(seed + 7, n=len(pool), d=pool.embeddings.shape[1])}
    return {}


def labeled_ctx(seed, d=8, m=5):
    r = np.random.default_rng(seed + 100)
    return LabeledContext(r.normal(size=(m, d)).astype(np.float32), r.integers(0, 30, NC).astype(np.float64))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.sampled_from(STRATEGIES), st.integers(0, 60), st.integers(1, 50),
       st.booleans(), st.booleans())
def test_every_strategy_returns_exactly_k_distinct_rows(seed, name, k, n, with_labeled, rare):
    pool = random_pool(seed, n=n)
    cfg = StrategyConfig(name=name, rare_class_weight=rare, dedup_threshold=None)
    sel = select(pool, k, cfg, labeled_ctx(seed) if with_labeled else None, **extras_for(name, pool, seed))
    assert len(sel.rows) == min(k, n)
    assert len(set(sel.rows.tolist())) == len(sel.rows)
    assert len(sel.scores) == len(sel.components) == len(sel.reasons) == len(sel.rows)
    assert all(isinstance(r, str) and r for r in sel.reasons)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.sampled_from([s for s in STRATEGIES if not s.startswith("random")]), st.integers(1, 25),
       st.booleans(), st.sampled_from(["nearest", "centroid"]))
def test_picked_images_do_not_depend_on_row_order(seed, name, k, with_labeled, diversity):
    pool = random_pool(seed, n=30)
    perm = np.random.default_rng(seed + 1).permutation(len(pool))
    cfg = StrategyConfig(name=name, diversity=diversity)
    lab = labeled_ctx(seed) if with_labeled else None
    ex = extras_for(name, pool, seed)
    ex_p = {k_: ([permute(m, perm) for m in v] if isinstance(v, list) else permute(v, perm)) for k_, v in ex.items()}
    a = select(pool, k, cfg, lab, **ex)
    b = select(permute(pool, perm), k, cfg, lab, **ex_p)
    assert set(pool.image_ids[a.rows].tolist()) == set(pool.image_ids[perm][b.rows].tolist())


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.sampled_from([s for s in STRATEGIES if s != "random"]), st.integers(1, 40),
       st.integers(1, 10))
def test_near_duplicates_are_never_both_picked(seed, name, k, n_dups):
    pool = random_pool(seed, n=30, dup_pairs=n_dups)
    cfg = StrategyConfig(name=name, dedup_threshold=0.98)
    sel = select(pool, k, cfg, **extras_for(name, pool, seed))
    x = pool.embeddings[sel.rows]
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sims = x @ x.T - 2 * np.eye(len(x))
    assert (sims < 0.98).all()
    # whole pool minus one of each duplicate pair is selectable, so the batch is only short when k exceeds it
    assert len(sel.rows) == min(k, 30 - min(n_dups, 15))
    for row, of, cos in sel.skipped_duplicates:
        assert cos >= 0.98 and (of.startswith("pool row ") or of.startswith("labeled #"))


def test_duplicate_of_a_labeled_image_is_skipped_and_recorded():
    pool = random_pool(0, n=20)
    lab = LabeledContext(pool.embeddings[[4]] * 2.0, np.zeros(NC))
    for name in ("detection_and_confusion", "coreset", "hybrid", "random_dedup"):
        sel = select(pool, 20, StrategyConfig(name=name), lab)
        assert 4 not in sel.rows.tolist()
        assert len(sel.rows) == 19
        assert (4, "labeled #0", pytest.approx(1.0, abs=1e-4)) in [(r, o, c) for r, o, c in sel.skipped_duplicates]


def test_softmax_least_confidence_ranks_by_uncertainty_and_empty_images_use_the_near_miss_policy():
    pool = ScoredPool(np.array([10, 11, 12, 13]), np.eye(4, dtype=np.float32), np.array([0, 1, 1, 2, 3]),
                      np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.4]], np.float32), np.zeros((3, 4), np.float32),
                      np.array([0.9, 0.45, 0.5, 0.6], np.float32))
    sel = select(pool, 4, StrategyConfig(name="softmax_least_confidence"))
    # uncertainties: 0.1, near-miss 0.45, 0.5, 0.4
    assert sel.rows.tolist() == [2, 1, 3, 0]
    assert sel.scores == pytest.approx([0.5, 0.45, 0.4, 0.1])
    assert "no box kept" in sel.reasons[1]
    fixed = select(pool, 1, StrategyConfig(name="softmax_least_confidence", empty_policy="fixed", empty_value=0.99))
    assert fixed.rows.tolist() == [1]


def test_hybrid_spreads_the_batch_where_plain_uncertainty_does_not():
    # two tight clusters; the most uncertain images all sit in cluster A
    r = np.random.default_rng(0)
    a = np.array([1, 0, 0], np.float32) + 0.01 * r.normal(size=(10, 3)).astype(np.float32)
    b = np.array([0, 1, 0], np.float32) + 0.01 * r.normal(size=(10, 3)).astype(np.float32)
    scores = np.concatenate([np.full((10, 2), 0.5), np.tile([[0.8, 0.2]], (10, 1))]).astype(np.float32)
    pool = ScoredPool(np.arange(20), np.concatenate([a, b]), np.arange(21), scores, np.zeros((20, 4), np.float32),
                      np.ones(20, np.float32))
    plain = select(pool, 2, StrategyConfig(name="softmax_least_confidence", dedup_threshold=None))
    hybrid = select(pool, 2, StrategyConfig(name="hybrid", alpha=0.3, beta=0.7, dedup_threshold=None))
    assert all(r < 10 for r in plain.rows)
    assert sorted(r // 10 for r in hybrid.rows) == [0, 1]
    assert hybrid.components[1]["diversity"] > 0.5
    assert {"uncertainty", "diversity", "rare_weight", "score"} <= set(hybrid.components[0])


def test_coreset_equals_k_center_greedy_with_labeled_centres():
    pool = random_pool(5, n=60)
    lab = labeled_ctx(5)
    sel = select(pool, 15, StrategyConfig(name="coreset", dedup_threshold=None), lab)
    assert sel.rows.tolist() == k_center_greedy(pool.embeddings, 15, lab.embeddings).tolist()
    assert covering_radius(pool.embeddings, sel.rows, lab.embeddings) <= covering_radius(
        pool.embeddings, sel.rows[:10], lab.embeddings)


def test_uncertainty_then_diverse_picks_among_top_candidates():
    pool = random_pool(6, n=100)
    cfg = StrategyConfig(name="uncertainty_then_diverse", candidate_factor=2, dedup_threshold=None)
    sel = select(pool, 10, cfg)
    unc = select(pool, 20, StrategyConfig(name="detection_and_confusion", dedup_threshold=None))
    assert set(sel.rows.tolist()) <= set(unc.rows.tolist())


def test_rare_class_weight_and_quota():
    pool = random_pool(8, n=60)
    counts = np.array([100.0, 100.0, 100.0, 0.0])  # class 3 never labeled
    lab = LabeledContext(np.zeros((0, 8), np.float32), counts)
    plain = select(pool, 10, StrategyConfig(name="detection_and_confusion"), lab)
    rare = select(pool, 10, StrategyConfig(name="detection_and_confusion", rare_class_weight=True), lab)
    presence3 = lambda rows: sum(pool.class_scores[pool.box_offsets[r]:pool.box_offsets[r + 1], 3].max(initial=0)
                                 for r in rows)
    assert presence3(rare.rows) >= presence3(plain.rows)
    assert all(c["rare_weight"] >= 1.0 for c in rare.components)
    quota = select(pool, 5, StrategyConfig(name="coreset", class_quotas={3: 3}), lab)
    top = np.argmax(pool.class_scores, axis=1)
    has3 = [any(top[pool.box_offsets[r]:pool.box_offsets[r + 1]] == 3) for r in quota.rows]
    assert sum(has3) >= 3
    assert "class quota for class 3" in quota.reasons[0]


def test_committee_and_consistency_require_their_inputs():
    pool = random_pool(1)
    with pytest.raises(ValueError, match="members"):
        select(pool, 3, StrategyConfig(name="committee"))
    with pytest.raises(ValueError, match="flipped"):
        select(pool, 3, StrategyConfig(name="consistency"))


def test_committee_of_identical_members_falls_back_to_id_order():
    pool = random_pool(2)
    sel = select(pool, 5, StrategyConfig(name="committee", dedup_threshold=None), members=[pool, pool, pool])
    assert all(c["disagreement"] == 0.0 for c in sel.components)


def test_config_from_dict_validates():
    cfg = StrategyConfig.from_dict({"name": "hybrid", "alpha": 0.6, "class_quotas": {"2": 4}})
    assert cfg.class_quotas == {2: 4} and cfg.alpha == 0.6
    with pytest.raises(ValueError, match="'alpah'"):
        StrategyConfig.from_dict({"alpah": 0.5})
    with pytest.raises(ValueError, match="'badname'"):
        StrategyConfig.from_dict({"name": "badname"})
    with pytest.raises(ValueError, match="aggregation"):
        StrategyConfig(aggregation="median")
    with pytest.raises(ValueError):
        select(random_pool(0), -1, StrategyConfig())


def test_random_dedup_ties_are_not_broken_by_file_order():
    # Scores that all tie must not give the first k files (consecutive frames).
    n, k = 200, 20
    rng = np.random.default_rng(0)
    pool = ScoredPool(
        image_ids=np.arange(1, n + 1, dtype=np.int64),
        embeddings=rng.normal(size=(n, 8)).astype(np.float32),
        box_offsets=np.zeros(n + 1, dtype=np.int64),
        class_scores=np.zeros((0, 3), np.float32),
        boxes=np.zeros((0, 4), np.float32),
        max_candidate_score=np.full(n, 0.002, np.float32),
    )
    picks = select(pool, k, StrategyConfig(name="random_dedup", dedup_threshold=None, seed=1))
    ids = sorted(pool.image_ids[picks.rows].tolist())
    assert ids != list(range(1, k + 1))
    assert max(ids) > 2 * k  # spread over the pool, not bunched at its start
    other_seed = select(pool, k, StrategyConfig(name="random_dedup", dedup_threshold=None, seed=2))
    assert set(other_seed.rows.tolist()) != set(picks.rows.tolist())


@pytest.mark.parametrize("name", ["detection_and_confusion", "hybrid", "uncertainty_then_diverse"])
def test_a_model_that_sees_nothing_falls_back_to_coverage_not_to_ties(name):
    n, k = 200, 20
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 8))
    emb = (centres[rng.integers(0, 20, n)] + 0.05 * rng.normal(size=(n, 8))).astype(np.float32)
    pool = ScoredPool(np.arange(1, n + 1, dtype=np.int64), emb, np.zeros(n + 1, dtype=np.int64),
                      np.zeros((0, 3), np.float32), np.zeros((0, 4), np.float32), np.full(n, 0.02, np.float32))
    sel = select(pool, k, StrategyConfig(name=name, dedup_threshold=None))
    assert all("too young to rank by uncertainty" in r for r in sel.reasons)
    assert sorted(sel.rows.tolist()) == sorted(k_center_greedy(emb, k).tolist())
    # coverage: every one of the 20 clusters gets a pick
    assert len({int(np.argmin(((centres - emb[r]) ** 2).sum(1))) for r in sel.rows}) == 20


def _hashed_pool(seed, n=40, groups=10):
    """A pool whose images come in `groups` near-duplicate groups by perceptual hash (a few bits apart)."""
    pool = random_pool(seed, n=n)
    r = np.random.default_rng(seed)
    base = r.integers(0, 2**63, size=(groups, 2), dtype=np.int64).astype(np.uint64)
    group = np.arange(n) % groups
    flips = np.uint64(1) << r.integers(0, 64, size=(n, 2)).astype(np.uint64)
    hashes = base[group] ^ flips  # one bit away from the group's base: near-duplicates of each other
    return ScoredPool(pool.image_ids, pool.embeddings, pool.box_offsets, pool.class_scores, pool.boxes,
                      pool.max_candidate_score, hashes=hashes), group


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(0, 10_000), st.sampled_from([s for s in STRATEGIES if s != "random"]))
def test_perceptual_hash_duplicates_are_never_both_picked(seed, name):
    pool, group = _hashed_pool(seed)
    sel = select(pool, 25, StrategyConfig(name=name, dedup_threshold=None, dedup_hamming=4),
                 **extras_for(name, pool, seed))
    assert len(set(group[sel.rows].tolist())) == len(sel.rows) == 10  # one per group, and the batch is short
    assert all("hash" in of for _, of, _ in sel.skipped_duplicates)


def test_random_stays_pure_and_hash_duplicates_of_labeled_images_are_skipped():
    pool, group = _hashed_pool(3)
    cfg = dict(dedup_threshold=None, dedup_hamming=4)
    pure = select(pool, 25, StrategyConfig(name="random", **cfg))
    assert len(pure.rows) == 25 and not pure.skipped_duplicates
    lab = LabeledContext(np.zeros((0, 8), np.float32), np.zeros(NC), hashes=pool.hashes[group == 0][:1])
    sel = select(pool, 25, StrategyConfig(name="random_dedup", **cfg), lab)
    assert 0 not in group[sel.rows] and len(sel.rows) == 9
    assert any(of == "labeled hash #0" for _, of, _ in sel.skipped_duplicates)


def test_old_names_that_normalised_sigmoids_are_refused_with_the_new_ones():
    with pytest.raises(ValueError, match="softmax_entropy"):
        StrategyConfig(name="entropy")
    with pytest.raises(ValueError, match="detection_and_confusion"):
        StrategyConfig(uncertainty="least_confidence")


def test_the_default_preset_is_what_an_empty_strategy_section_means():
    from labelwise.presets import PRESETS

    assert StrategyConfig.from_dict(PRESETS["default"]) == StrategyConfig()
    article = StrategyConfig.from_dict(PRESETS["article"])
    assert article.uncertainty == "article_least_confidence" and article.diversity == "centroid"
    assert article.dedup_threshold is None and article.dedup_hamming is None
