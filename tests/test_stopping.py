"""Stopping rules: the article's table, the article's log-fit flaw, Kneedle, and stabilizing predictions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from labelwise.stopping import (
    RULES,
    RoundHistory,
    StopAdvice,
    advise,
    find_knee,
    image_agreement,
    knee_rule,
    learning_curve_stats,
    min_gain_rule,
    prediction_agreement,
    replay_stopping,
    stabilizing_predictions_rule,
    stop_round,
)

# The article's "typical learning curve" table: seed round 0, then rounds 1..6.
ARTICLE_LABELS = [500, 700, 900, 1100, 1300, 1500, 1700]
ARTICLE_MAP50 = [0.41, 0.59, 0.69, 0.75, 0.79, 0.81, 0.815]


def article_log_fit_prediction(map50: list[float]) -> float:
    """The article's own prediction (log of clipped gains, straight line), to show the flaw we avoid."""
    gains = np.diff(map50)
    t = np.arange(gains.size, dtype=float)
    slope, intercept = np.polyfit(t, np.log(np.maximum(gains, 1e-6)), 1)
    return float(np.exp(intercept) * np.exp(slope * gains.size))


# ── min-gain rule ────────────────────────────────────────────────────────────────────────────────────────────────


def test_min_gain_rule_stops_the_article_table_at_round_6():
    assert stop_round("min_gain", ARTICLE_MAP50, ARTICLE_LABELS) == 6
    advice = min_gain_rule(ARTICLE_MAP50)
    assert advice == StopAdvice("min_gain", True, 6, advice.reason)
    assert "+0.0050" in advice.reason
    # Round 5's gain (+0.02) is still worth it.
    assert min_gain_rule(ARTICLE_MAP50[:6]).stop is False


def test_min_gain_rule_gain_exactly_at_threshold_stops_despite_float_rounding():
    # In binary floating point 0.815 - 0.81 = 0.00499999999999989 but 0.305 - 0.3 = 0.0050000000000000044;
    # both are a gain of 0.005 and must be treated alike.
    assert 0.305 - 0.3 > 0.005 > 0.815 - 0.81
    assert min_gain_rule([0.2, 0.3, 0.305]).stop
    assert min_gain_rule([0.2, 0.81, 0.815]).stop
    assert not min_gain_rule([0.2, 0.300, 0.3051]).stop


def test_min_gain_rule_patience_needs_rounds_in_a_row():
    history = [0.40, 0.50, 0.502, 0.56, 0.561]
    assert min_gain_rule(history, patience=1).stop
    assert not min_gain_rule(history, patience=2).stop  # the small gains are not consecutive
    assert min_gain_rule([0.40, 0.50, 0.502, 0.503], patience=2).stop


def test_min_gain_rule_negative_gain_stops_and_nan_does_not():
    assert min_gain_rule([0.5, 0.6, 0.58]).stop
    assert not min_gain_rule([0.5, 0.6, float("nan")]).stop


@pytest.mark.parametrize("history", [[], [0.4]])
def test_min_gain_rule_short_history_is_not_ready(history):
    advice = min_gain_rule(history)
    assert advice.stop is False and advice.ready is False and advice.at_round is None
    assert "not enough rounds" in advice.reason


# ── learning-curve statistics ────────────────────────────────────────────────────────────────────────────────────


def test_learning_curve_stats_reproduces_the_article_table_gains_and_roi():
    stats = learning_curve_stats(ARTICLE_MAP50, ARTICLE_LABELS)
    np.testing.assert_allclose(stats.gains, [0.18, 0.10, 0.06, 0.04, 0.02, 0.005], atol=1e-12)
    np.testing.assert_allclose(stats.roi_per_100_labels, [0.09, 0.05, 0.03, 0.02, 0.01, 0.0025], atol=1e-12)
    assert stats.current_map50 == pytest.approx(0.815)
    assert stats.fit == "saturating-exponential"
    assert stats.next_labels == 200
    # The fitted curve saturates a little above the last value, and predicts a small, positive next gain.
    assert 0.815 < stats.fit_params["m_inf"] < 0.9
    assert 0.0 < stats.predicted_next_gain < 0.02


def test_learning_curve_prediction_matches_an_exact_exponential_curve():
    # m(n) = 0.9 - 0.5 exp(-n / 400): the fit recovers it, so the prediction is the true next gain.
    labels = np.arange(100, 1300, 200, dtype=float)
    truth = lambda n: 0.9 - 0.5 * np.exp(-n / 400.0)  # noqa: E731
    stats = learning_curve_stats(truth(labels), labels)
    expected = truth(labels[-1] + 200) - truth(labels[-1])
    assert stats.predicted_next_gain == pytest.approx(expected, rel=1e-3)
    assert stats.fit_params["c"] == pytest.approx(1 / 400.0, rel=1e-3)


def test_one_negative_gain_does_not_wreck_the_prediction_unlike_the_article():
    # A healthy curve with one noisy dip at round 3 (gain -0.02); gains after it are +0.09 and +0.04.
    labels = [100, 200, 300, 400, 500, 600]
    map50 = [0.40, 0.55, 0.65, 0.63, 0.72, 0.76]
    # The article's log(max(gain, 1e-6)) turns the dip into log(1e-6) = -13.8 and predicts almost nothing: "stop".
    assert article_log_fit_prediction(map50) < 0.005
    stats = learning_curve_stats(map50, labels)
    assert stats.fit == "saturating-exponential"
    # Ours treats the dip as one point under the curve: a sensible positive gain, below the last gain, so continue.
    assert 0.005 < stats.predicted_next_gain < 0.04
    assert stats.recommendation == "continue" and not stats.advice.stop
    # Same curve without the dip (0.63 -> 0.685, in between) gives a similar prediction: the dip barely matters.
    smooth = learning_curve_stats([0.40, 0.55, 0.65, 0.685, 0.72, 0.76], labels)
    assert stats.predicted_next_gain == pytest.approx(smooth.predicted_next_gain, abs=0.01)


def test_learning_curve_flat_or_falling_curve_advises_stop():
    labels = [100, 200, 300, 400, 500]
    assert learning_curve_stats([0.60, 0.601, 0.600, 0.602, 0.601], labels).advice.stop
    falling = learning_curve_stats([0.60, 0.58, 0.57, 0.55, 0.54], labels)
    assert falling.advice.stop and falling.predicted_next_gain <= 0.005


def test_learning_curve_fallback_with_two_or_three_rounds_uses_the_last_gain_per_label():
    stats = learning_curve_stats([0.3, 0.5, 0.6], [100, 200, 400])
    assert stats.fit == "last-gain" and stats.fit_params is None
    # last gain 0.1 for 200 labels, next round assumed 200 labels as well
    assert stats.predicted_next_gain == pytest.approx(0.1)
    assert learning_curve_stats([0.3, 0.5, 0.6], [100, 200, 400], next_labels=100).predicted_next_gain == (
        pytest.approx(0.05))


def test_learning_curve_uneven_batches_predict_in_labels_not_rounds():
    # The same true curve sampled with uneven batches gives the same prediction for the same next batch.
    truth = lambda n: 0.85 - 0.45 * np.exp(-np.asarray(n, dtype=float) / 500.0)  # noqa: E731
    even = np.array([200, 400, 600, 800, 1000])
    uneven = np.array([200, 250, 500, 900, 1000])
    a = learning_curve_stats(truth(even), even, next_labels=200).predicted_next_gain
    b = learning_curve_stats(truth(uneven), uneven, next_labels=200).predicted_next_gain
    assert a == pytest.approx(b, rel=1e-2)


@pytest.mark.parametrize("map50,labels", [([], []), ([0.4], [100]), ([0.4, 0.5], []), ([], [100, 200])])
def test_learning_curve_short_history_is_not_ready(map50, labels):
    stats = learning_curve_stats(map50, labels)
    assert not stats.advice.stop and not stats.advice.ready
    assert stats.predicted_next_gain is None and stats.fit == "none"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=0, max_size=9), st.integers(1, 300))
def test_learning_curve_never_raises_on_arbitrary_histories(map50, step):
    labels = [100 + step * i for i in range(len(map50))]
    stats = learning_curve_stats(map50, labels)
    assert stats.recommendation in ("stop", "continue")
    if len(map50) >= 2:
        assert math.isfinite(stats.predicted_next_gain)


# ── Kneedle ──────────────────────────────────────────────────────────────────────────────────────────────────────


def continuous_kneedle_knee(f, a: float, b: float) -> float:
    """Where the Kneedle difference curve y_n - x_n peaks, on a dense grid (independent of `kneed`)."""
    grid = np.linspace(a, b, 200_001)
    y = f(grid)
    difference = (y - y[0]) / (y[-1] - y[0]) - (grid - a) / (b - a)
    return float(grid[np.argmax(difference)])


def test_kneedle_finds_the_knee_of_a_saturating_curve_where_it_should():
    saturating = lambda n: 0.8 * (1 - np.exp(-n / 300.0))  # noqa: E731
    labels = np.arange(100, 2100, 100, dtype=float)
    expected = continuous_kneedle_knee(saturating, labels[0], labels[-1])
    assert 500 < expected < 700  # sanity: the bend of a 300-label time constant over 100..2000
    knee = find_knee(labels, saturating(labels))
    assert knee is not None and abs(knee - expected) <= 100  # within one round of the true knee
    advice = knee_rule(labels, saturating(labels))
    assert advice.stop and advice.at_round == labels.size - 1


def test_knee_rule_waits_while_the_curve_is_still_straight():
    labels = np.arange(100, 800, 100, dtype=float)
    advice = knee_rule(labels, 0.2 + 0.0005 * labels)
    assert advice.ready and not advice.stop


def test_knee_rule_replayed_stops_only_after_the_bend():
    saturating = lambda n: 0.8 * (1 - np.exp(-n / 300.0))  # noqa: E731
    labels = np.arange(100, 2100, 100, dtype=float)
    r = stop_round("knee", saturating(labels), labels)
    assert r is not None
    assert labels[r] > find_knee(labels[: r + 1], saturating(labels[: r + 1]))
    assert labels[r] >= 500  # not before the curve has bent


@pytest.mark.parametrize(
    "labels,map50",
    [([100, 200, 300], [0.1, 0.3, 0.4]), ([100, 200, 300, 400], [0.5, 0.5, 0.5, 0.5]),
     ([100, 200, 200, 300], [0.1, 0.3, 0.4, 0.45]), ([], [])],
)
def test_knee_rule_degenerate_histories_do_not_stop_or_raise(labels, map50):
    assert knee_rule(labels, map50).stop is False


# ── stabilizing predictions ──────────────────────────────────────────────────────────────────────────────────────


def predictions(*boxes_and_classes):
    return [(np.asarray(b, dtype=float).reshape(-1, 4), np.asarray(c, dtype=int)) for b, c in boxes_and_classes]


STOP_SET = predictions(
    ([[0, 0, 10, 10], [20, 20, 40, 40]], [0, 1]),
    ([[5, 5, 50, 50]], [2]),
    ([], []),
    ([[0, 0, 30, 30], [40, 0, 70, 30], [0, 40, 30, 70]], [0, 0, 1]),
)


def test_identical_predictions_agree_fully():
    assert prediction_agreement(STOP_SET, STOP_SET) == 1.0


def test_disjoint_predictions_do_not_agree():
    shifted = [(boxes + 1000.0, classes) for boxes, classes in STOP_SET[:2]]
    assert prediction_agreement(STOP_SET[:2], shifted) == 0.0


def test_one_class_flip_lowers_agreement_by_exactly_its_share():
    flipped = [(b.copy(), c.copy()) for b, c in STOP_SET]
    flipped[0][1][1] = 3  # image 0, second box: class 1 -> 3, same place
    # image 0: 1 of 2 boxes matched -> 0.5; the other three images agree fully
    assert prediction_agreement(STOP_SET, flipped) == pytest.approx((0.5 + 1 + 1 + 1) / 4)


def test_agreement_divides_by_the_larger_box_count_and_empty_images_agree():
    assert image_agreement(np.zeros((0, 4)), [], np.zeros((0, 4)), []) == 1.0
    # the current model finds one extra box: 2 matched of max(2, 3)
    prev_boxes, prev_classes = STOP_SET[0]
    curr_boxes = np.vstack([prev_boxes, [[100, 100, 120, 120]]])
    assert image_agreement(prev_boxes, prev_classes, curr_boxes, [0, 1, 0]) == pytest.approx(2 / 3)
    # a lost box on an otherwise empty image: no agreement on that image
    assert image_agreement(prev_boxes[:1], [0], np.zeros((0, 4)), []) == 0.0


def test_agreement_iou_threshold_is_half():
    a = np.array([[0, 0, 10, 10]], dtype=float)
    just_over = np.array([[0, 0, 10, 20]], dtype=float) * [1, 1, 1, 0.99]  # IoU 10*10 / (10*19.8) > 0.5
    just_under = np.array([[0, 0, 10, 21]], dtype=float)  # IoU 100 / 210 < 0.5
    assert image_agreement(a, [0], just_over, [0]) == 1.0
    assert image_agreement(a, [0], just_under, [0]) == 0.0


def test_agreement_rejects_stop_sets_of_different_sizes():
    with pytest.raises(ValueError):
        prediction_agreement(STOP_SET, STOP_SET[:2])
    assert math.isnan(prediction_agreement([], []))


def test_stabilizing_rule_needs_window_rounds_in_a_row_above_threshold():
    assert stabilizing_predictions_rule([math.nan, 0.7, 0.92, 0.95, 0.97]).stop
    assert stabilizing_predictions_rule([math.nan, 0.7, 0.92, 0.95, 0.97]).at_round == 4
    assert not stabilizing_predictions_rule([math.nan, 0.95, 0.92, 0.85, 0.97]).stop
    assert not stabilizing_predictions_rule([0.95, math.nan, 0.95, 0.96]).stop  # NaN inside the window
    assert not stabilizing_predictions_rule([0.95, 0.96, math.nan]).stop  # unmeasured round breaks the run
    short = stabilizing_predictions_rule([math.nan, 0.99])
    assert not short.stop and not short.ready
    assert stop_round("stabilizing_predictions", None, None, [math.nan, 0.8, 0.91, 0.93, 0.95, 0.96]) == 4


# ── advise / replay ──────────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    "history",
    [None, {}, RoundHistory(), {"map50": [0.4]}, {"labeled_counts": [100, 200]},
     {"map50": np.array([0.4, 0.5]), "labeled_counts": np.array([100]), "agreements": np.array([np.nan])}],
)
def test_advise_never_raises_on_missing_or_short_history(history):
    advice = advise(history)
    assert [a.rule for a in advice] == list(RULES)
    assert all(not a.stop for a in advice)
    assert all("not enough rounds" in a.reason for a in advice if not a.ready)


def test_advise_on_the_article_table():
    history = RoundHistory(ARTICLE_LABELS, ARTICLE_MAP50, [math.nan, 0.5, 0.7, 0.8, 0.92, 0.94, 0.95])
    by_rule = {a.rule: a for a in advise(history)}
    assert by_rule["min_gain"].stop and by_rule["min_gain"].at_round == 6
    assert by_rule["knee"].stop
    assert by_rule["stabilizing_predictions"].stop
    assert by_rule["learning_curve"].ready


def test_replay_reports_map_given_up_against_the_last_round():
    replays = {r.rule: r for r in replay_stopping(ARTICLE_MAP50, ARTICLE_LABELS)}
    assert replays["min_gain"].stop_round == 6 and replays["min_gain"].map50_given_up == 0.0
    knee = replays["knee"]
    assert knee.stop_round is not None and knee.stop_round < 6
    assert knee.map50_given_up == pytest.approx(0.815 - ARTICLE_MAP50[knee.stop_round])
    assert knee.labels_saved == 1700 - ARTICLE_LABELS[knee.stop_round]
    assert replays["stabilizing_predictions"].stop_round is None  # no agreements measured


def test_stop_round_is_the_first_prefix_that_stops():
    # gain dips below 0.005 at round 2, then recovers: the live loop would have stopped at 2.
    assert stop_round("min_gain", [0.3, 0.4, 0.401, 0.5, 0.6]) == 2
    assert stop_round("min_gain", [0.3, 0.4, 0.5]) is None
    with pytest.raises(ValueError):
        stop_round("no-such-rule", [0.3, 0.4])
