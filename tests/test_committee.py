import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labelwise.committee import committee_disagreement, object_disagreement, vote_entropy
from labelwise.detections import ScoredPool


def random_pool(seed, n=15, nc=3):
    r = np.random.default_rng(seed)
    cnt = r.integers(0, 4, n)
    off = np.concatenate([[0], np.cumsum(cnt)]).astype(np.int64)
    b = int(off[-1])
    xy = r.random((b, 2)) * 0.7
    wh = r.random((b, 2)) * 0.3 + 0.02
    return ScoredPool(np.arange(n), r.normal(size=(n, 4)).astype(np.float32), off,
                      r.random((b, nc)).astype(np.float32), np.concatenate([xy, xy + wh], 1).astype(np.float32),
                      r.random(n).astype(np.float32))


def test_vote_entropy_by_hand():
    assert vote_entropy(np.array([1, 1, 1]), 4) == 0.0
    # votes (a, a, b): -(2/3 ln 2/3 + 1/3 ln 1/3) / ln 3
    want = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3)
    assert vote_entropy(np.array([0, 0, 2]), 4) == pytest.approx(want)
    assert vote_entropy(np.array([0, 1, 2]), 4) == pytest.approx(1.0)


def test_missing_member_votes_background_and_has_iou_zero():
    box = np.array([[0.1, 0.1, 0.5, 0.5]])
    scores = np.array([[0.9, 0.1]])
    d = object_disagreement([box, box, np.zeros((0, 4))], [scores, scores, np.zeros((0, 2))])
    ve = -(2 / 3 * np.log(2 / 3) + 1 / 3 * np.log(1 / 3)) / np.log(3)
    loc = 1 - (1.0 + 0 + 0) / 3
    assert d == pytest.approx([0.5 * ve + 0.5 * loc])


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(2, 5), st.sampled_from(["max", "mean", "sum", "mean_top_n"]))
def test_committee_of_identical_members_has_zero_disagreement(seed, n_members, method):
    pool = random_pool(seed)
    d = committee_disagreement([pool] * n_members, method)
    assert d == pytest.approx(np.zeros(len(pool)), abs=1e-12)


def test_disagreeing_members_score_higher():
    a = random_pool(1)
    b = random_pool(2)
    assert committee_disagreement([a, b, a]).sum() > 0


def test_members_must_align():
    a = random_pool(1)
    b = ScoredPool(a.image_ids[::-1].copy(), a.embeddings, a.box_offsets, a.class_scores, a.boxes,
                   a.max_candidate_score)
    with pytest.raises(ValueError, match="same images"):
        committee_disagreement([a, b])
