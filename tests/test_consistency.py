import numpy as np
import pytest

from labelwise.consistency import box_inconsistency, consistency_scores, jensen_shannon
from labelwise.detections import ScoredPool


def test_jensen_shannon_by_hand():
    assert jensen_shannon(np.array([[0.5, 0.5]]), np.array([[0.5, 0.5]]))[0] == pytest.approx(0.0)
    assert jensen_shannon(np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]]))[0] == pytest.approx(1.0)
    p, q = np.array([0.8, 0.2]), np.array([0.4, 0.6])
    m = (p + q) / 2
    want = (np.sum(p * np.log(p / m)) + np.sum(q * np.log(q / m))) / (2 * np.log(2))
    assert jensen_shannon(p[None], q[None])[0] == pytest.approx(want)


def test_matched_pair_and_unmatched_boxes():
    a = np.array([[0.0, 0.0, 1.0, 1.0], [5, 5, 6, 6]])
    b = np.array([[0.0, 0.0, 1.0, 0.8]])  # IoU 0.8 with a[0]; a[1] vanished under the flip
    s = np.array([[0.8, 0.2], [0.5, 0.5]])
    t = np.array([[0.8, 0.2]])
    v = box_inconsistency(a, s, b, t)
    assert sorted(v.tolist()) == pytest.approx([0.5 * 0.2, 1.0])


def test_identical_passes_are_fully_consistent_and_empty_images_score_zero():
    pool = ScoredPool(np.array([1, 2]), np.zeros((2, 3), np.float32), np.array([0, 2, 2]),
                      np.array([[0.7, 0.1], [0.2, 0.6]], np.float32),
                      np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1]], np.float32), np.array([0.7, 0.1], np.float32))
    assert consistency_scores(pool, pool) == pytest.approx([0.0, 0.0])
    empty = ScoredPool(pool.image_ids, pool.embeddings, np.array([0, 0, 0]), np.zeros((0, 2), np.float32),
                       np.zeros((0, 4), np.float32), pool.max_candidate_score)
    assert consistency_scores(pool, empty) == pytest.approx([1.0, 0.0])
