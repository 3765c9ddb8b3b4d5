"""Learning-curve comparisons: labels to reach a target, the saving against random, AUC, mean over seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelwise.savings import area_under_curve, label_saving, labels_to_reach, mean_curve, paired_savings

RANDOM = ([100, 200, 300, 400, 500], [0.30, 0.40, 0.48, 0.54, 0.60])


def test_labels_to_reach_interpolates_exactly_between_rounds():
    labels, map50 = [100, 200, 300], [0.2, 0.4, 0.5]
    # 0.45 is half-way from 0.4 (200 labels) to 0.5 (300 labels)
    assert labels_to_reach(labels, map50, 0.45) == pytest.approx(250.0)
    assert labels_to_reach(labels, map50, 0.25) == pytest.approx(125.0)
    assert labels_to_reach(labels, map50, 0.4) == pytest.approx(200.0)  # reached exactly at a round
    assert labels_to_reach(labels, map50, 0.1) == 100.0  # already there at the first round
    assert labels_to_reach(labels, map50, 0.51) is None


def test_labels_to_reach_takes_the_first_crossing_of_a_non_monotone_curve():
    # crosses 0.5 between 100 and 200, dips, crosses again later: the first crossing counts
    assert labels_to_reach([100, 200, 300, 400], [0.4, 0.6, 0.45, 0.7], 0.5) == pytest.approx(150.0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=10), st.floats(0.0, 1.0))
def test_labels_to_reach_lands_in_the_crossing_interval(map50, target):
    labels = np.arange(1, len(map50) + 1) * 100.0
    n = labels_to_reach(labels, map50, target)
    reached = [i for i, m in enumerate(map50) if m >= target]
    if not reached:
        assert n is None
        return
    r = reached[0]
    low = labels[r - 1] if r > 0 else labels[0]
    assert low - 1e-9 <= n <= labels[r] + 1e-9
    # interpolating the curve at n gives back the target (when the crossing is inside an interval)
    if r > 0:
        assert np.interp(n, labels[r - 1 : r + 1], map50[r - 1 : r + 1]) == pytest.approx(target, abs=1e-9)


def test_strategy_reaching_randoms_final_map_at_60_percent_of_the_labels_saves_40_percent():
    # random reaches 0.60 at 500 labels; the strategy reaches 0.60 at 300 labels = 60% of 500
    strategy = ([100, 200, 300, 400, 500], [0.35, 0.50, 0.60, 0.64, 0.66])
    saving = label_saving(strategy, RANDOM)
    assert saving.target_map50 == pytest.approx(0.60)
    assert saving.random_labels == 500
    assert saving.labels_needed == pytest.approx(300.0)
    assert saving.saving_percent == pytest.approx(40.0)


def test_saving_with_an_interpolated_crossing_and_a_losing_strategy():
    strategy = ([100, 200, 300, 400, 500], [0.35, 0.50, 0.56, 0.64, 0.66])
    # 0.60 is half-way from 0.56 (300) to 0.64 (400): 350 labels -> 30% saved
    assert label_saving(strategy, RANDOM).saving_percent == pytest.approx(30.0)
    worse = ([100, 200, 300, 400, 500], [0.25, 0.33, 0.40, 0.45, 0.50])
    losing = label_saving(worse, RANDOM)
    assert losing.labels_needed is None and losing.saving_percent is None
    assert label_saving(RANDOM, RANDOM).saving_percent == pytest.approx(0.0)


def test_area_under_curve_is_the_mean_map_over_the_label_range():
    assert area_under_curve([100, 300], [0.2, 0.6]) == pytest.approx(0.4)
    # trapezoids: (0.2+0.4)/2*100 + (0.4+0.5)/2*200 = 30 + 90 = 120 over 300 labels
    assert area_under_curve([100, 200, 400], [0.2, 0.4, 0.5]) == pytest.approx(120 / 300)
    assert area_under_curve([100], [0.3]) == pytest.approx(0.3)
    assert area_under_curve([100, 200, 300], [0.5, 0.5, 0.5]) == pytest.approx(0.5)


def test_area_under_curve_over_a_common_label_range():
    # over 150..250 the curve runs 0.3 -> 0.45 -> 0.5 ... piecewise linear
    labels, map50 = [100, 200, 300], [0.2, 0.4, 0.5]
    expected = ((0.3 + 0.4) / 2 * 50 + (0.4 + 0.45) / 2 * 50) / 100
    assert area_under_curve(labels, map50, label_range=(150, 250)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        area_under_curve(labels, map50, label_range=(50, 250))


def test_a_curve_above_another_has_the_larger_area():
    labels = [100, 200, 300, 400]
    assert area_under_curve(labels, [0.3, 0.5, 0.6, 0.65]) > area_under_curve(labels, [0.3, 0.4, 0.5, 0.6])


def test_mean_curve_aggregates_seeds_by_round_and_truncates_to_the_shortest():
    seeds = [
        ([100, 200, 300], [0.2, 0.4, 0.5]),
        ([100, 200, 300], [0.4, 0.6, 0.7]),
        ([100, 200], [0.3, 0.5]),
    ]
    summary = mean_curve(seeds)
    assert summary.n_seeds == 3
    np.testing.assert_allclose(summary.labeled_counts, [100, 200])
    np.testing.assert_allclose(summary.mean, [0.3, 0.5])
    np.testing.assert_allclose(summary.low, [0.2, 0.4])
    np.testing.assert_allclose(summary.high, [0.4, 0.6])
    np.testing.assert_allclose(summary.std, [np.std([0.2, 0.4, 0.3]), np.std([0.4, 0.6, 0.5])])


def test_paired_savings_pairs_seed_with_seed():
    strategy = [([100, 200], [0.3, 0.5]), ([100, 200], [0.45, 0.6])]
    random = [([100, 200], [0.3, 0.4]), ([100, 200], [0.3, 0.6])]
    savings = paired_savings(strategy, random)
    # seed 0: 0.4 reached at 150 of 200 -> 25%; seed 1: 0.6 reached at 200 of 200 -> 0%
    assert [s.saving_percent for s in savings] == [pytest.approx(25.0), pytest.approx(0.0)]
    with pytest.raises(ValueError):
        paired_savings(strategy, random[:1])


def test_mismatched_or_decreasing_curves_are_rejected():
    with pytest.raises(ValueError):
        labels_to_reach([100, 200], [0.1], 0.1)
    with pytest.raises(ValueError):
        area_under_curve([200, 100], [0.1, 0.2])
