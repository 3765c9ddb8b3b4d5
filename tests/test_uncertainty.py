import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from labelwise.detections import ScoredPool
from labelwise.uncertainty import (ARTICLE_CONF, aggregate, aggregate_csr, bernoulli_entropy_bits, box_uncertainty,
                                   class_confusion, detection_and_confusion, detection_entropy,
                                   empty_image_scores, evidence_share, image_uncertainty, near_miss_scores,
                                   normalise_rows, softmax_entropy, softmax_least_confidence, softmax_margin)

FAINT = [0.051, 0.040, 0.045, 0.030]  # clutter: probably not an object at all
AMBIGUOUS = [0.5, 0.01, 0.01, 0.01]  # one class, a coin toss whether it is an object
CONFUSED = [0.6, 0.55, 0.01, 0.01]  # probably an object, two classes explain it
CONFIDENT = [0.95, 0.02, 0.01, 0.01]


def _per_box(measure):
    return {name: float(box_uncertainty(np.array([row]), measure)[0])
            for name, row in (("faint", FAINT), ("ambiguous", AMBIGUOUS), ("confused", CONFUSED),
                              ("confident", CONFIDENT))}


@pytest.mark.parametrize("measure", ["detection_and_confusion", "detection_entropy"])
def test_sigmoid_measures_rank_faint_clutter_and_confident_boxes_below_ambiguous_and_confused_ones(measure):
    u = _per_box(measure)
    assert u["faint"] < u["ambiguous"] and u["faint"] < u["confused"]
    assert u["confident"] < u["ambiguous"] and u["confident"] < u["confused"]


def test_class_confusion_only_for_boxes_two_plausible_classes_explain():
    u = _per_box("class_confusion")
    assert u["confused"] > 0.5
    assert u["faint"] == u["ambiguous"] == u["confident"] == 0.0
    # the object probability weighs it: the same 50/50 split on a box that is probably nothing counts less
    assert class_confusion(np.array([[0.3, 0.3, 0.0]]))[0] < class_confusion(np.array([[0.9, 0.9, 0.0]]))[0]


def test_the_combined_measure_ranks_a_confused_box_above_an_ambiguous_one():
    u = _per_box("detection_and_confusion")
    assert u["confused"] > u["ambiguous"] > u["confident"]


def test_softmax_measures_are_the_defect_the_issue_measured_on_sigmoid_rows():
    # the normalised least confidence of faint clutter is near its maximum of 0.75: why it is softmax-only
    assert softmax_least_confidence(np.array([FAINT]))[0] == pytest.approx(0.693, abs=1e-3)
    assert softmax_least_confidence(np.array([[0.26, 0.001, 0.001, 0.001]]))[0] < 0.02
    assert _per_box("softmax_least_confidence")["faint"] > _per_box("softmax_least_confidence")["ambiguous"]


def test_detection_entropy_is_the_binary_entropy_of_the_top_score_in_bits():
    p = np.array([[0.5, 0.1], [0.9, 0.3], [1.0, 0.0], [0.0, 0.0]])
    want = [1.0, -(0.9 * np.log2(0.9) + 0.1 * np.log2(0.1)), 0.0, 0.0]
    assert detection_entropy(p) == pytest.approx(want)
    assert bernoulli_entropy_bits(np.array([0.2]))[0] == pytest.approx(bernoulli_entropy_bits(np.array([0.8]))[0])


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=6))
def test_sigmoid_measures_stay_in_their_ranges(row):
    p = np.array([row])
    assert 0.0 <= detection_entropy(p)[0] <= 1.0 + 1e-12
    assert 0.0 <= class_confusion(p)[0] <= 1.0
    assert detection_and_confusion(p)[0] == pytest.approx(detection_entropy(p)[0] + class_confusion(p)[0])


def test_softmax_measures_equal_the_classic_definitions_on_a_distribution():
    p = np.array([[0.5, 0.3, 0.2]])
    assert softmax_least_confidence(p)[0] == pytest.approx(0.5)
    assert softmax_margin(p)[0] == pytest.approx(0.8)
    assert softmax_entropy(p)[0] == pytest.approx(-(0.5 * np.log(0.5) + 0.3 * np.log(0.3) + 0.2 * np.log(0.2)))
    assert np.allclose(normalise_rows(np.zeros((1, 4))), 0.25)


def test_single_class_softmax_reads_score_as_object_vs_background():
    assert box_uncertainty(np.array([[0.3]]), "softmax_least_confidence")[0] == pytest.approx(0.3)
    assert box_uncertainty(np.array([[0.3]]), "softmax_margin")[0] == pytest.approx(1 - 0.4)


def test_unknown_measure_is_refused():
    with pytest.raises(ValueError, match="unknown uncertainty measure"):
        box_uncertainty(np.array([[0.3, 0.2]]), "least_confidence")


def test_near_miss_counts_only_candidates_that_clear_the_box_threshold():
    s = np.array([0.0, 0.05, 0.5])
    got = near_miss_scores(s, "detection_entropy", box_threshold=0.1)
    assert got == pytest.approx([0.0, 0.0, 1.0])
    assert near_miss_scores(s, "class_confusion") == pytest.approx([0, 0, 0])
    assert near_miss_scores(s, "softmax_least_confidence") == pytest.approx([0.0, 0.05, 0.5])
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


def _pool(rows_per_image, max_candidate):
    counts = [len(r) for r in rows_per_image]
    scores = np.array([row for rows in rows_per_image for row in rows], np.float32).reshape(-1, 4)
    return ScoredPool(
        image_ids=np.arange(len(counts)), embeddings=np.zeros((len(counts), 2), np.float32),
        box_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), class_scores=scores,
        boxes=np.zeros((scores.shape[0], 4), np.float32),
        max_candidate_score=np.asarray(max_candidate, np.float32))


def test_image_uncertainty_ignores_boxes_under_the_box_threshold():
    # image 0: a confident box plus faint clutter; image 1: one ambiguous box; image 2: clutter only
    pool = _pool([[CONFIDENT, FAINT, FAINT], [AMBIGUOUS], [FAINT]], [0.95, 0.5, 0.051])
    u = image_uncertainty(pool, "detection_and_confusion", "sum", box_threshold=0.1)
    assert u[0] == pytest.approx(detection_entropy(np.array([CONFIDENT]))[0])  # clutter added nothing
    assert u[1] == pytest.approx(1.0)
    assert u[2] == 0.0  # nothing counts: the near miss of 0.051 is under the threshold too
    assert u[1] > u[0] > u[2]
    # with the threshold at 0 the clutter counts, and the image ranks above the ambiguous one under sum
    assert image_uncertainty(pool, "detection_and_confusion", "sum", box_threshold=0.0)[0] > u[0]


def test_article_least_confidence_is_one_minus_the_lowest_top_score_at_or_above_its_threshold():
    pool = _pool([[CONFIDENT, [0.3, 0, 0, 0], [0.2, 0, 0, 0]], [[0.1, 0, 0, 0]], []], [0.95, 0.1, 0.0])
    u = image_uncertainty(pool, "article_least_confidence", "sum", box_threshold=0.0, empty_policy="fixed",
                          empty_value=1.0)
    # image 0: boxes 0.95 and 0.3 count (0.2 < 0.25), so 1 - 0.3; images 1 and 2 have none: the article's 1.0
    assert ARTICLE_CONF == 0.25
    assert u == pytest.approx([0.7, 1.0, 1.0])


def test_evidence_share_counts_images_with_a_box_over_the_threshold():
    pool = _pool([[CONFIDENT], [FAINT], [], [AMBIGUOUS, FAINT]], [0.95, 0.051, 0.0, 0.5])
    assert evidence_share(pool, 0.1) == pytest.approx(0.5)
    assert evidence_share(pool, 0.99) == 0.0
