"""Learning-curve comparisons: labels to reach a target, the saving against random, AUC, mean over seeds."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelwise.savings import (
    area_under_curve,
    censored_labels,
    compare_seeds,
    label_saving,
    labels_to_reach,
    labels_to_reach_seeds,
    mean_ci,
    mean_curve,
    paired_savings,
)

RANDOM = ([100, 200, 300, 400, 500], [0.30, 0.40, 0.48, 0.54, 0.60])
PLATEAU = ([100, 200, 300, 400, 500], [0.50, 0.60, 0.62, 0.61, 0.62])


# -- the null case first: a curve against itself saves nothing ------------------------------------------------------


def test_random_against_itself_saves_exactly_zero_even_on_a_plateau():
    # random's final 0.62 is first reached at 300 labels, not 500: dividing by the final count would give 40%
    saving = label_saving(PLATEAU, PLATEAU)
    assert saving.saving_percent == 0.0
    assert saving.labels_needed == saving.random_labels == 300.0
    assert saving.random_final_labels == 500.0
    assert label_saving(RANDOM, RANDOM).saving_percent == 0.0


def _curve_from(values, steps):
    """A learning curve with the given mAP50s; labeled counts grow by the given positive steps."""
    return np.cumsum(np.asarray(steps, dtype=float)).tolist(), values


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12).flatmap(lambda n: st.tuples(
    st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n),
    st.lists(st.integers(1, 500), min_size=n, max_size=n))))
def test_any_curve_against_itself_saves_exactly_zero(drawn):
    values, steps = drawn
    curve = _curve_from(values, steps)
    assert label_saving(curve, curve).saving_percent == 0.0
    comparison = compare_seeds([curve, curve], [curve, curve])
    assert [s.saving_percent for s in comparison.seeds] == [0.0, 0.0]
    assert [s.auc_difference for s in comparison.seeds] == [0.0, 0.0]
    assert comparison.saving.mean == 0.0 and comparison.n_censored == 0


def test_a_plateaued_strategy_is_measured_against_the_labels_random_needed_first():
    # random first reaches its final 0.62 at 300; a strategy that reaches 0.62 at 150 saves 50%, not 70%
    strategy = ([100, 200, 300, 400, 500], [0.52, 0.72, 0.73, 0.74, 0.75])
    saving = label_saving(strategy, PLATEAU)
    # 0.62 is half-way from 0.52 (100) to 0.72 (200): 150 labels
    assert saving.labels_needed == pytest.approx(150.0)
    assert saving.saving_percent == pytest.approx(100 * (1 - 150 / 300))


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


# -- intervals, censoring, paired statistics ------------------------------------------------------------------------


def test_mean_ci_matches_a_hand_computed_student_t_interval():
    from scipy import stats

    x = [12.0, 30.0, 21.0, 17.0]
    ci = mean_ci(x)
    mean = sum(x) / 4
    sd = (sum((v - mean) ** 2 for v in x) / 3) ** 0.5
    half = stats.t.ppf(0.975, df=3) * sd / 2
    assert ci.mean == pytest.approx(mean) and ci.sd == pytest.approx(sd)
    assert (ci.low, ci.high) == (pytest.approx(mean - half), pytest.approx(mean + half))
    assert (ci.low, ci.high) == pytest.approx(stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(x)))
    assert ci.n == 4 and ci.half_width == pytest.approx(half)
    # a wider confidence gives a wider interval
    assert mean_ci(x, 0.99).half_width > ci.half_width


def test_mean_ci_with_one_seed_has_no_interval_and_missing_values_are_refused():
    one = mean_ci([25.0])
    assert one.mean == 25.0 and one.n == 1
    assert one.low is None and one.high is None and one.half_width is None and one.sd is None
    assert mean_ci([]).mean is None
    with pytest.raises(ValueError):
        mean_ci([1.0, float("nan")])


def test_censored_labels_are_the_final_count_plus_one_round():
    assert censored_labels([100, 200, 300]) == 400.0
    assert censored_labels([100, 200, 300], round_step=50) == 350.0
    assert censored_labels([100]) == 100.0


def test_a_seed_that_never_reaches_the_target_is_censored_not_dropped():
    random = [([100, 200, 300, 400], [0.3, 0.4, 0.5, 0.6]), ([100, 200, 300, 400], [0.3, 0.45, 0.5, 0.6])]
    strategy = [
        ([100, 200, 300, 400], [0.3, 0.6, 0.62, 0.65]),  # reaches 0.6 at 200 of random's 400: 50%
        ([100, 200, 300, 400], [0.3, 0.4, 0.45, 0.5]),  # never reaches 0.6: charged 400 + 100 = 500
    ]
    comparison = compare_seeds(strategy, random)
    first, second = comparison.seeds
    assert not first.censored and first.labels_needed == pytest.approx(200)
    assert first.saving_percent == pytest.approx(50)
    assert second.censored and second.labels_needed == 500.0
    assert second.saving_percent == pytest.approx(100 * (1 - 500 / 400))
    assert comparison.n_censored == 1
    # the mean has both seeds behind it: dropping the censored one would report 50%
    assert comparison.saving.n == 2
    assert comparison.saving.mean == pytest.approx((50 - 25) / 2)
    # the paired AUC difference is the difference of the two areas over the shared range
    assert first.auc_difference == pytest.approx(area_under_curve(*strategy[0]) - area_under_curve(*random[0]))
    assert comparison.auc_difference.mean == pytest.approx(
        np.mean([s.auc - s.random_auc for s in comparison.seeds]))
    assert comparison.auc.mean == pytest.approx(np.mean([area_under_curve(*c) for c in strategy]))


def test_compare_seeds_ci_is_the_t_interval_of_the_per_seed_savings():
    from scipy import stats

    random = [([100, 200, 300], [0.2, 0.4, 0.5])] * 3
    strategy = [([100, 200, 300], [0.2, 0.5, 0.6]),  # 0.5 at 200 -> 1 - 200/300
                ([100, 200, 300], [0.3, 0.45, 0.55]),  # 0.5 half-way 200..300 -> 250
                ([100, 200, 300], [0.5, 0.55, 0.6])]  # at once: 100
    comparison = compare_seeds(strategy, random)
    expected = [100 * (1 - n / 300) for n in (200, 250, 100)]
    assert [s.saving_percent for s in comparison.seeds] == pytest.approx(expected)
    low, high = stats.t.interval(0.95, 2, loc=np.mean(expected), scale=stats.sem(expected))
    assert (comparison.saving.low, comparison.saving.high) == (pytest.approx(low), pytest.approx(high))
    with pytest.raises(ValueError):
        compare_seeds(strategy, random[:2])


def test_labels_to_reach_seeds_gives_a_mean_only_when_every_seed_got_there():
    curves = [([100, 200, 300], [0.2, 0.4, 0.6]), ([100, 200, 300], [0.3, 0.5, 0.7])]
    both = labels_to_reach_seeds(curves, 0.5)
    assert both.per_seed == [pytest.approx(250), pytest.approx(200)]
    assert both.mean == pytest.approx(225) and both.n_reached == 2
    one = labels_to_reach_seeds(curves, 0.65)
    assert one.per_seed[0] is None and one.n_reached == 1 and one.mean is None


def test_mean_curve_band_is_the_t_interval_of_the_mean_per_round():
    from scipy import stats

    seeds = [([100, 200], [0.2, 0.4]), ([100, 200], [0.4, 0.6]), ([100, 200], [0.3, 0.8])]
    summary = mean_curve(seeds)
    for r in range(2):
        values = [c[1][r] for c in seeds]
        low, high = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values))
        assert summary.ci_low[r] == pytest.approx(low) and summary.ci_high[r] == pytest.approx(high)
    single = mean_curve(seeds[:1])
    np.testing.assert_allclose(single.ci_low, single.mean)
