import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labelwise.detections import ScoredPool
from labelwise.uncertainty import (aggregate, aggregate_csr, binary_entropy, box_uncertainty, empty_image_scores,
                                   entropy, image_uncertainty, least_confidence, margin, near_miss_scores,
                                   normalise_rows)


def test_margin_of_normalised_row_matches_hand_computation():
    # [1.0, 0.6, 0.4] sums to 2 -> [0.5, 0.3, 0.2]; margin = 1 - (0.5 - 0.3) = 0.8
    assert margin(np.array([[1.0, 0.6, 0.4]]))[0] == pytest.approx(0.8)
    assert margin(np.array([[0.5, 0.3, 0.2]]))[0] == pytest.approx(0.8)


def test_least_confidence_and_entropy_on_a_distribution_equal_the_classic_definitions():
    p = np.array([[0.5, 0.3, 0.2]])
    assert least_confidence(p)[0] == pytest.approx(0.5)
    assert entropy(p)[0] == pytest.approx(-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)))


def test_sigmoid_rows_are_normalised_first():
    p = np.array([[0.8, 0.8, 0.0, 0.0]])  # two equally likely classes -> [0.5, 0.5, 0, 0]
    assert least_confidence(p)[0] == pytest.approx(0.5)
    assert margin(p)[0] == pytest.approx(1.0)
    assert entropy(p)[0] == pytest.approx(np.log(2))


def test_all_zero_row_is_uniform_not_nan():
    p = np.zeros((1, 4))
    assert np.allclose(normalise_rows(p), 0.25)
    assert least_confidence(p)[0] == pytest.approx(0.75)
    assert entropy(p)[0] == pytest.approx(np.log(4))
    assert margin(p)[0] == pytest.approx(1.0)


def test_binary_entropy_per_class():
    p = np.array([[0.5, 1.0, 0.0, 0.2]])
    h = binary_entropy(p, reduce="none")[0]
    assert h == pytest.approx([np.log(2), 0.0, 0.0, -(0.2 * np.log(0.2) + 0.8 * np.log(0.8))])
    assert binary_entropy(p)[0] == pytest.approx(h.sum())
    assert binary_entropy(p, reduce="max")[0] == pytest.approx(np.log(2))


def test_single_class_model_reads_score_as_object_vs_background():
    assert box_uncertainty(np.array([[0.3]]), "least_confidence")[0] == pytest.approx(0.3)
    assert box_uncertainty(np.array([[0.3]]), "margin")[0] == pytest.approx(1 - 0.4)


def test_near_miss_policy_uses_the_top_candidate_score():
    s = np.array([0.0, 0.2, 0.5])
    assert near_miss_scores(s, "least_confidence") == pytest.approx([0.0, 0.2, 0.5])
    assert near_miss_scores(s, "entropy")[2] == pytest.approx(np.log(2))
    assert empty_image_scores(s, policy="fixed", value=0.4) == pytest.approx([0.4] * 3)
    with pytest.raises(ValueError, match="policy"):
        empty_image_scores(s, policy="zero")


def test_aggregate_methods():
    u = np.array([0.1, 0.9, 0.5, 0.3])
    assert aggregate(u, "max") == pytest.approx(0.9)
    assert aggregate(u, "mean_top_n", n=2) == pytest.approx(0.7)
    assert aggregate(u, "mean_top_n", n=10) == pytest.approx(0.45)
    assert aggregate(u, "mean") == pytest.approx(0.45)
    assert aggregate(u, "sum") == pytest.approx(1.8)
    with pytest.raises(ValueError, match="no box"):
        aggregate(np.zeros(0), "max")
    assert aggregate(np.zeros(0), "max", empty=0.25) == 0.25
    with pytest.raises(ValueError, match="aggregation"):
        aggregate(u, "median")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1), max_size=6), min_size=1, max_size=12),
       st.sampled_from(["max", "mean_top_n", "mean", "sum"]), st.integers(1, 4))
def test_csr_aggregation_equals_per_image_aggregation(images, method, n):
    counts = np.array([len(b) for b in images])
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    flat = np.array([v for b in images for v in b], dtype=np.float64)
    empty = np.arange(len(images)) / 100.0
    got = aggregate_csr(flat, offsets, method, n, empty)
    want = [aggregate(np.array(b), method, n, empty=empty[i]) for i, b in enumerate(images)]
    assert got == pytest.approx(want)


def test_image_uncertainty_over_a_pool_with_empty_images():
    pool = ScoredPool(
        image_ids=np.array([1, 2, 3]), embeddings=np.zeros((3, 2), np.float32),
        box_offsets=np.array([0, 2, 2, 3]),
        class_scores=np.array([[0.9, 0.1], [0.5, 0.5], [0.6, 0.2]], np.float32),
        boxes=np.zeros((3, 4), np.float32), max_candidate_score=np.array([0.9, 0.2, 0.6], np.float32))
    u = image_uncertainty(pool, "least_confidence", "max")
    assert u == pytest.approx([0.5, 0.2, 0.25])
