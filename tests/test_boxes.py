"""Box geometry: IoU and the one-to-one matching the committee, consistency and stopping rules share."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from labelwise.boxes import iou_matrix, match_boxes, match_ious


def test_pairs_below_the_threshold_do_not_steal_a_valid_match():
    # the largest total IoU pairs (0,1) and (1,0), both below .5: assigning first and thresholding after lost (0,0)
    rows, cols, ious = match_ious(np.array([[0.515, 0.448], [0.356, 0.257]]), 0.5)
    assert rows.tolist() == [0] and cols.tolist() == [0] and ious.tolist() == [0.515]


def test_the_same_with_boxes():
    # full-width strips of a 1 x 1 square: IoU is the overlap of their vertical extents over the union
    a = np.array([[0, 0, 1, 1], [0, 0.275, 1, 0.675]])
    b = np.array([[0, 0, 1, 0.515], [0, 0, 1, 0.448]])
    assert iou_matrix(a, b) == pytest.approx(np.array([[0.515, 0.448], [0.356, 0.256]]), abs=1e-3)
    rows, cols, ious = match_boxes(a, b, 0.5)
    assert list(zip(rows.tolist(), cols.tolist())) == [(0, 0)] and ious.tolist() == pytest.approx([0.515])


def test_more_valid_pairs_win_over_a_larger_total_iou():
    # (0,0) and (1,1) at .99 against (0,1), (1,2), (2,0) at .5: three valid pairs beat two better ones
    ious = np.array([[0.99, 0.5, 0.0], [0.0, 0.99, 0.5], [0.5, 0.0, 0.0]])
    rows, cols, _ = match_ious(ious, 0.5)
    assert len(rows) == 3


def test_empty_inputs_and_nothing_valid():
    for shape in [(0, 3), (3, 0), (0, 0)]:
        rows, cols, ious = match_ious(np.zeros(shape), 0.5)
        assert rows.size == cols.size == ious.size == 0 and rows.dtype == np.int64
    rows, _, _ = match_ious(np.full((2, 2), 0.3), 0.5)
    assert rows.size == 0
    rows, _, _ = match_ious(np.array([[np.nan, 0.7]]), 0.5)
    assert rows.tolist() == [0]


def _max_matching(valid: np.ndarray) -> int:
    """Size of the largest one-to-one matching among the valid pairs, by brute force (small matrices only)."""
    n, m = valid.shape
    best = 0
    for k in range(min(n, m), 0, -1):
        for rows in itertools.combinations(range(n), k):
            for cols in itertools.permutations(range(m), k):
                if all(valid[r, c] for r, c in zip(rows, cols)):
                    return k
    return best


def _check(ious: np.ndarray, threshold: float) -> None:
    rows, cols, got = match_ious(ious, threshold)
    assert len(set(rows.tolist())) == len(rows) and len(set(cols.tolist())) == len(cols)  # one-to-one
    assert np.all(got >= threshold) and np.array_equal(got, ious[rows, cols])
    valid = ious >= threshold
    free_a = np.setdiff1d(np.arange(ious.shape[0]), rows)
    free_b = np.setdiff1d(np.arange(ious.shape[1]), cols)
    assert not valid[np.ix_(free_a, free_b)].any()  # no valid pair left with both boxes unmatched
    if max(ious.shape) <= 5:
        assert len(rows) == _max_matching(valid)


@settings(max_examples=300, deadline=None)
@given(arrays(np.float64, st.tuples(st.integers(0, 5), st.integers(0, 5)),
              elements=st.integers(0, 100).map(lambda k: k / 100)),  # a coarse grid: ties and near-ties are common
       st.sampled_from([0.1, 0.3, 0.5, 0.75]))
def test_matching_on_any_iou_matrix(ious, threshold):
    _check(ious, threshold)


_box = st.tuples(st.floats(0, 50), st.floats(0, 50), st.floats(1, 30), st.floats(1, 30)).map(
    lambda t: [t[0], t[1], t[0] + t[2], t[1] + t[3]])


@settings(max_examples=200, deadline=None)
@given(st.lists(_box, max_size=7), st.lists(_box, max_size=7), st.sampled_from([0.1, 0.3, 0.5]))
def test_matching_on_boxes(a, b, threshold):
    a, b = np.array(a).reshape(-1, 4), np.array(b).reshape(-1, 4)
    rows, cols, got = match_boxes(a, b, threshold)
    assert np.array_equal(got, iou_matrix(a, b)[rows, cols])
    _check(iou_matrix(a, b), threshold)
