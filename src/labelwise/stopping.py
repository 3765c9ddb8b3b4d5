"""When to stop labelling: four stopping rules over the history of active-learning rounds, as pure functions.

Pure NumPy/SciPy (plus `kneed` for Kneedle); no I/O, so `labelwise status`, `labelwise run`, the simulation and the
report all give the same advice for the same history.

Conventions shared by every function here:

- A history is aligned by round. Round 0 is the first trained model (the seed set); round r is the model after the
  r-th batch of labels. `map50[r]` and `labeled_counts[r]` belong to round r.
- `agreements[r]` compares the predictions of the models of rounds r - 1 and r on a fixed unlabeled stop set, so
  `agreements[0]` has nothing to compare with and should be NaN. NaN anywhere means "not measured".
- Every rule returns a `StopAdvice`; a rule given too little history says so in its reason and advises to continue
  instead of raising.

The rules:

- `min_gain_rule`: the article's rule, stop when the last round's mAP50 gain is below `min_map_gain` (0.005).
- `learning_curve_stats`: the article's learning-curve statistics (gains, ROI per 100 labels, predicted next gain),
  with the exponential fit done by non-linear least squares on mAP50 itself instead of the article's log of clipped
  gains, which lets one negative gain drag the prediction to about zero.
- `knee_rule`: Kneedle (Satopää et al., 2011) on mAP50 against labeled images.
- `stabilizing_predictions_rule` with `prediction_agreement`: a label-free rule (Bloodgood and Vijay-Shanker, 2009)
  adapted to detection.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import curve_fit

from labelwise.boxes import match_boxes

DEFAULT_MIN_GAIN = 0.005
"""The article's `min_map_gain`: half a point of mAP50 per round is not worth another round."""

DEFAULT_AGREEMENT_THRESHOLD = 0.9
"""Stabilizing predictions threshold for the detection agreement of `prediction_agreement` (see that rule)."""

DEFAULT_AGREEMENT_WINDOW = 3
"""Rounds in a row the agreement must stay at or above the threshold; the paper's window of three."""

# mAP values are reported to 3-4 decimals and subtracted in binary floating point: 0.815 - 0.81 is not exactly
# 0.005. A gain within this of the threshold counts as reaching it ("no more than min_gain"), which is what the
# article's own table means when it calls the +0.005 round the knee.
_GAIN_TOLERANCE = 1e-9

RULE_MIN_GAIN = "min_gain"
RULE_LEARNING_CURVE = "learning_curve"
RULE_KNEE = "knee"
RULE_STABILIZING = "stabilizing_predictions"
RULES = (RULE_MIN_GAIN, RULE_LEARNING_CURVE, RULE_KNEE, RULE_STABILIZING)

_FIT_SATURATING = "saturating-exponential"
_FIT_LAST_GAIN = "last-gain"
_FIT_NONE = "none"


@dataclass(frozen=True)
class StopAdvice:
    """What one stopping rule says about a history.

    rule: the rule's name, one of `RULES`.
    stop: True when the rule says to stop labelling now.
    at_round: the round the decision is taken at (the history's last round) when `stop` is True, else None.
    reason: one line for a human, with the numbers behind the decision.
    ready: False when the history was too short (or missing) for the rule to judge; `stop` is then False.
    """

    rule: str
    stop: bool
    at_round: int | None
    reason: str
    ready: bool = True


@dataclass(frozen=True)
class CurveStats:
    """The article's learning-curve statistics, with a fit that tolerates negative gains.

    gains: mAP50[r] - mAP50[r - 1] for r = 1..R (length R, one fewer than the rounds).
    roi_per_100_labels: gains[r] / ((labeled[r] - labeled[r - 1]) / 100); NaN where no labels were added.
    predicted_next_gain: the mAP50 gain expected from one more round of `next_labels` labels; None with < 2 rounds.
    next_labels: the label count of that next round (by default, the same as the last round added).
    fit: "saturating-exponential" (the fitted curve made the prediction), "last-gain" (fallback: the last gain,
        rescaled to `next_labels`), or "none" (fewer than two rounds).
    fit_params: {"m_inf", "b", "c"} of m(n) = m_inf - b * exp(-c * (n - n_0)), c per label, when the fit was used.
    current_map50: the last round's mAP50 (NaN for an empty history).
    advice: the continue/stop decision as a `StopAdvice` (rule "learning_curve").
    """

    gains: tuple[float, ...]
    roi_per_100_labels: tuple[float, ...]
    predicted_next_gain: float | None
    next_labels: float | None
    fit: str
    fit_params: dict[str, float] | None
    current_map50: float
    advice: StopAdvice

    @property
    def recommendation(self) -> str:
        """The article's wording: "stop" or "continue"."""
        return "stop" if self.advice.stop else "continue"


@dataclass(frozen=True)
class RoundHistory:
    """A round history as arrays aligned by round (see the module docstring); any field may be empty or short."""

    labeled_counts: Sequence[float] = field(default_factory=tuple)
    map50: Sequence[float] = field(default_factory=tuple)
    agreements: Sequence[float] = field(default_factory=tuple)


@dataclass(frozen=True)
class StopReplay:
    """Where a rule would have stopped a finished history, replayed round by round (see `replay_stopping`).

    stop_round: the first round at which the rule said stop, None if it never did.
    labeled_at_stop, map50_at_stop: the history's values at that round.
    map50_given_up: map50[last] - map50[stop_round]: what stopping there cost against running every round
        (negative when mAP50 fell afterwards).
    labels_saved: labeled[last] - labeled[stop_round].
    """

    rule: str
    stop_round: int | None
    labeled_at_stop: float | None
    map50_at_stop: float | None
    map50_given_up: float | None
    labels_saved: float | None


def _as_float_array(values: Sequence[float] | None) -> np.ndarray:
    if values is None:
        return np.zeros(0, dtype=np.float64)
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _not_ready(rule: str, reason: str) -> StopAdvice:
    return StopAdvice(rule=rule, stop=False, at_round=None, reason=reason, ready=False)


# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
# The article's rule
# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────


def min_gain_rule(map50: Sequence[float], min_gain: float = DEFAULT_MIN_GAIN, patience: int = 1) -> StopAdvice:
    """The article's stopping rule: stop when the mAP50 gain of the last `patience` rounds stayed below `min_gain`.

    gain_r = mAP50_r - mAP50_{r-1};  stop at round R  iff  gain_r <= min_gain for every r in (R - patience, R].

    The article stops when a single round's gain is below 0.005 (`patience=1`); a larger patience guards against
    one noisy round. A gain equal to `min_gain` (within 1e-9 of float rounding) counts as too small, as in the
    article's example table where the +0.005 round is the knee. A NaN mAP50 (round not evaluated) never stops.
    """
    if patience < 1:
        raise ValueError(f"patience must be at least 1, got {patience}")
    values = _as_float_array(map50)
    if values.size < patience + 1:
        return _not_ready(
            RULE_MIN_GAIN,
            f"not enough rounds yet: {values.size} evaluated, the gain rule needs {patience + 1}",
        )
    recent_gains = np.diff(values)[-patience:]
    last_round = values.size - 1
    # NaN <= x is False, so an unevaluated round keeps the loop going rather than stopping it by accident.
    small = recent_gains <= min_gain + _GAIN_TOLERANCE
    shown = ", ".join(f"{g:+.4f}" for g in recent_gains)
    if bool(np.all(small)):
        rounds = "the last round" if patience == 1 else f"{patience} rounds in a row"
        return StopAdvice(
            RULE_MIN_GAIN, True, last_round,
            f"mAP50 gain {shown} below min gain {min_gain:.4f} for {rounds}: stop",
        )
    return StopAdvice(
        RULE_MIN_GAIN, False, None, f"mAP50 gain {shown} above min gain {min_gain:.4f}: continue",
    )


# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
# The article's learning-curve statistics, with a fit that does not take logs
# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────


def _saturating(x: np.ndarray, m_inf: float, b: float, c: float) -> np.ndarray:
    return m_inf - b * np.exp(-c * x)


def _fit_saturating(labels: np.ndarray, map50: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares fit of m(n) = m_inf - b exp(-c (n - n_0)); (m_inf, b, c per label) or None when it fails."""
    n0 = labels[0]
    span = labels[-1] - n0
    if span <= 0:
        return None
    # Fit on labels scaled to [0, 1] so that c is of order 1 whatever the dataset size; unscale c afterwards.
    x = (labels - n0) / span
    rise = max(float(map50[-1] - map50[0]), 1e-3)
    p0 = (min(float(np.max(map50)) + rise / 2, 1.0), rise * 1.5, 2.0)
    # m_inf <= 1 because mAP cannot exceed 1: it keeps a still-linear curve from running off to a huge asymptote.
    # b >= 0 and c >= 0 make the curve non-decreasing, so a falling curve fits as flat (predicted gain ~0: stop).
    lower = (-1.0, 0.0, 0.0)
    upper = (1.0, 10.0, 50.0)
    p0 = tuple(float(np.clip(v, lo + 1e-9, hi - 1e-9)) for v, lo, hi in zip(p0, lower, upper))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            params, _ = curve_fit(_saturating, x, map50, p0=p0, bounds=(lower, upper), maxfev=5000)
    except (RuntimeError, ValueError):
        return None
    m_inf, b, c_scaled = (float(v) for v in params)
    if not all(math.isfinite(v) for v in (m_inf, b, c_scaled)):
        return None
    return m_inf, b, c_scaled / float(span)


def learning_curve_stats(
    map50: Sequence[float],
    labeled_counts: Sequence[float],
    min_gain: float = DEFAULT_MIN_GAIN,
    next_labels: float | None = None,
) -> CurveStats:
    """The article's learning-curve statistics and its continue/stop advice, without the article's log-fit flaw.

    gains_r = mAP50_r - mAP50_{r-1};   ROI_r per 100 labels = gains_r / ((n_r - n_{r-1}) / 100).

    Predicted next gain. The article fits g(t) = g_0 exp(-λ t) to the per-round gains by a straight line through
    log(max(g, 1e-6)); one negative gain becomes log(1e-6) ≈ -13.8, an outlier that drags the line down and
    predicts almost no gain. Here the same exponential decay is fitted where it is measured: on mAP50 against
    labeled images, by non-linear least squares (scipy `curve_fit`, trust-region, bounded) on the raw values,

        m(n) = m_inf - b exp(-c (n - n_0)),    b >= 0, c >= 0, m_inf <= 1,

    whose marginal gain per label, dm/dn = b c exp(-c (n - n_0)), is exactly the article's exponential decay, but in
    labels rather than rounds (so uneven batches are handled), and each mAP50 enters once with its own noise instead
    of twice through the differences. A round whose mAP50 dipped is just a point below the curve. The prediction is

        predicted_next_gain = m(n_R + Δ) - m(n_R),   Δ = next_labels, by default n_R - n_{R-1}.

    The 3-parameter fit needs at least 4 rounds (3 gains, as the article's fit); with 2-3 rounds, or when the fit
    fails, the fallback is the last gain rescaled to Δ labels: gain_R · Δ / (n_R - n_{R-1}).
    Advice: stop when predicted_next_gain <= min_gain (the article's 0.005), else continue.
    """
    values = _as_float_array(map50)
    labels = _as_float_array(labeled_counts)
    # Only rounds known in both arrays can be used; a short array means the rest is not known yet.
    n_rounds = min(values.size, labels.size)
    values, labels = values[:n_rounds], labels[:n_rounds]
    current = float(values[-1]) if n_rounds else float("nan")
    gains = np.diff(values)
    added = np.diff(labels)
    with np.errstate(divide="ignore", invalid="ignore"):
        roi = np.where(added > 0, gains / (added / 100.0), np.nan)

    if n_rounds < 2:
        advice = _not_ready(
            RULE_LEARNING_CURVE,
            f"not enough rounds yet: {n_rounds} with both mAP50 and label count, the curve needs 2",
        )
        return CurveStats((), (), None, None, _FIT_NONE, None, current, advice)

    step = float(next_labels) if next_labels is not None else float(added[-1])
    predicted: float | None = None
    fit_name = _FIT_LAST_GAIN
    fit_params: dict[str, float] | None = None
    finite = bool(np.all(np.isfinite(values)) and np.all(np.isfinite(labels)))
    if n_rounds >= 4 and finite and bool(np.all(added > 0)):
        params = _fit_saturating(labels, values)
        if params is not None:
            m_inf, b, c = params
            x_last = labels[-1] - labels[0]
            predicted = float(b * (np.exp(-c * x_last) - np.exp(-c * (x_last + step))))
            fit_name = _FIT_SATURATING
            fit_params = {"m_inf": m_inf, "b": b, "c": c}
    if predicted is None:
        last_added = float(added[-1])
        predicted = float(gains[-1] * step / last_added) if last_added > 0 else float(gains[-1])

    last_round = n_rounds - 1
    how = "fitted saturating curve" if fit_name == _FIT_SATURATING else "last gain (too few rounds to fit)"
    if not math.isfinite(predicted):
        advice = _not_ready(RULE_LEARNING_CURVE, "mAP50 or label count missing in the last rounds: cannot predict")
    elif predicted <= min_gain + _GAIN_TOLERANCE:
        advice = StopAdvice(
            RULE_LEARNING_CURVE, True, last_round,
            f"predicted next gain {predicted:+.4f} for {step:.0f} more labels ({how}) below {min_gain:.4f}: stop",
        )
    else:
        advice = StopAdvice(
            RULE_LEARNING_CURVE, False, None,
            f"predicted next gain {predicted:+.4f} for {step:.0f} more labels ({how}) above {min_gain:.4f}: "
            "still worth another round",
        )
    return CurveStats(
        gains=tuple(float(g) for g in gains),
        roi_per_100_labels=tuple(float(r) for r in roi),
        predicted_next_gain=predicted,
        next_labels=step,
        fit=fit_name,
        fit_params=fit_params,
        current_map50=current,
        advice=advice,
    )


# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
# Kneedle
# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────

KNEE_MIN_ROUNDS = 4
"""Kneedle on three points always calls the middle one a knee of any concave triple; four is the least that says
something about the curve's shape."""


def find_knee(labeled_counts: Sequence[float], map50: Sequence[float], sensitivity: float = 1.0) -> float | None:
    """The Kneedle knee (Satopää et al., 2011) of mAP50 against labeled images, in labeled images; None if none.

    Kneedle normalises both axes to [0, 1], takes the difference curve d(x) = y_n(x) - x_n, and calls a local
    maximum of d a knee once d later drops below that maximum minus S · mean(Δx_n) (S = `sensitivity`). Runs the
    `kneed` package with curve="concave", direction="increasing" (a learning curve), offline (first knee found).
    """
    from kneed import KneeLocator  # kneed imports matplotlib: keep that cost out of `import labelwise.stopping`

    labels = _as_float_array(labeled_counts)
    values = _as_float_array(map50)
    n_rounds = min(labels.size, values.size)
    labels, values = labels[:n_rounds], values[:n_rounds]
    if n_rounds < 3 or not (np.all(np.isfinite(labels)) and np.all(np.isfinite(values))):
        return None
    # Kneedle divides by the ranges of both axes: a flat curve or repeated label counts have no knee.
    if np.ptp(values) <= 0 or np.any(np.diff(labels) <= 0):
        return None
    with warnings.catch_warnings():
        # kneed warns "No knee/elbow found" instead of returning quietly; None says the same thing.
        warnings.simplefilter("ignore")
        locator = KneeLocator(
            labels, values, S=sensitivity, curve="concave", direction="increasing", online=False,
        )
    knee = locator.knee
    return None if knee is None else float(knee)


def knee_rule(labeled_counts: Sequence[float], map50: Sequence[float], sensitivity: float = 1.0) -> StopAdvice:
    """Knee rule: stop once Kneedle (Satopää et al., 2011) finds a knee and the last round is past it.

    knee = Kneedle(labeled, mAP50; concave, increasing, S = sensitivity);  stop iff knee exists and n_R > knee.

    S = 1 is the Kneedle paper's recommendation for offline data; a larger S waits for a sharper bend. The curve is
    used as measured (no smoothing): a noisy dip can create an early knee, which is why this is advice and the
    simulation reports what each rule would have given up. Needs at least `KNEE_MIN_ROUNDS` rounds.
    """
    labels = _as_float_array(labeled_counts)
    values = _as_float_array(map50)
    n_rounds = min(labels.size, values.size)
    if n_rounds < KNEE_MIN_ROUNDS:
        return _not_ready(
            RULE_KNEE, f"not enough rounds yet: {n_rounds} with mAP50 and labels, Kneedle needs {KNEE_MIN_ROUNDS}",
        )
    labels, values = labels[:n_rounds], values[:n_rounds]
    if np.any(np.diff(labels) <= 0):
        return _not_ready(RULE_KNEE, "labeled counts do not increase from round to round: no learning curve")
    knee = find_knee(labels, values, sensitivity)
    if knee is None:
        return StopAdvice(RULE_KNEE, False, None, f"no knee in the learning curve yet (S={sensitivity:g}): continue")
    if labels[-1] > knee:
        return StopAdvice(
            RULE_KNEE, True, n_rounds - 1,
            f"learning curve bends at {knee:.0f} labels and {labels[-1]:.0f} are labeled: stop",
        )
    return StopAdvice(RULE_KNEE, False, None, f"knee at {knee:.0f} labels, not yet past it: continue")


# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
# Stabilizing predictions, adapted to detection
# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────


def image_agreement(
    prev_boxes: np.ndarray,
    prev_classes: np.ndarray,
    curr_boxes: np.ndarray,
    curr_classes: np.ndarray,
    iou_threshold: float = 0.5,
) -> float:
    """Agreement of two detectors on one image: matched / max(n_prev, n_curr), 1.0 when both found nothing.

    A match is a one-to-one pair (Hungarian on IoU, `labelwise.boxes.match_boxes`) of a previous and a current box
    of the SAME class with IoU >= `iou_threshold`; matching runs class by class, so a relabelled box counts as one
    box lost and one found, as in mAP. Dividing by the larger count (not the mean, as F1 would) makes agreement 1
    only when neither model has a box the other lacks.
    """
    prev_boxes = np.asarray(prev_boxes, dtype=np.float64).reshape(-1, 4)
    curr_boxes = np.asarray(curr_boxes, dtype=np.float64).reshape(-1, 4)
    prev_classes = np.asarray(prev_classes).reshape(-1).astype(np.int64)
    curr_classes = np.asarray(curr_classes).reshape(-1).astype(np.int64)
    if prev_boxes.shape[0] != prev_classes.size or curr_boxes.shape[0] != curr_classes.size:
        raise ValueError("each image needs one class per box")
    n_prev, n_curr = prev_boxes.shape[0], curr_boxes.shape[0]
    if n_prev == 0 and n_curr == 0:
        return 1.0
    matched = 0
    for cls in np.intersect1d(prev_classes, curr_classes):
        rows, _, _ = match_boxes(prev_boxes[prev_classes == cls], curr_boxes[curr_classes == cls], iou_threshold)
        matched += int(rows.size)
    return matched / max(n_prev, n_curr)


def prediction_agreement(
    prev: Sequence[tuple[np.ndarray, np.ndarray]],
    curr: Sequence[tuple[np.ndarray, np.ndarray]],
    iou_threshold: float = 0.5,
) -> float:
    """How much two successive models agree on a fixed unlabeled stop set (stabilizing predictions, detection).

    prev[i], curr[i]: image i's predictions from the previous and the current round's model, as
    (boxes xyxy (n, 4), classes (n,)), at the confidence threshold the models are used at.

        agreement = (1 / N) Σ_i  m_i / max(p_i, c_i)     (an image where both models find nothing counts 1),

    m_i the same-class IoU >= 0.5 one-to-one matches (`image_agreement`), p_i and c_i the two models' box counts.

    Bloodgood and Vijay-Shanker (2009) measure Cohen's kappa between successive classifiers on a stop set. Kappa's
    chance correction needs the "both say no" cell, which detection does not have (there is no countable set of
    non-boxes), so this is the box-level agreement without chance correction; averaging per image keeps one crowded
    image from outweighing the rest. Returns NaN for an empty stop set.
    """
    if len(prev) != len(curr):
        raise ValueError(f"the two models were run on different stop sets: {len(prev)} vs {len(curr)} images")
    if len(prev) == 0:
        return float("nan")
    per_image = [
        image_agreement(p_boxes, p_classes, c_boxes, c_classes, iou_threshold)
        for (p_boxes, p_classes), (c_boxes, c_classes) in zip(prev, curr)
    ]
    return float(np.mean(per_image))


def stabilizing_predictions_rule(
    agreements: Sequence[float],
    threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    window: int = DEFAULT_AGREEMENT_WINDOW,
) -> StopAdvice:
    """Stabilizing predictions (Bloodgood and Vijay-Shanker, 2009): stop when successive models stop disagreeing.

    stop at round R  iff  agreement_r >= threshold for every r in (R - window, R]   (NaN = not measured: no stop).

    The paper stops when kappa between successive models on the stop set stays high over a window of three rounds,
    with a threshold of 0.99 for text classification. Box-level detection agreement (`prediction_agreement`) is
    lower for a model that has stopped improving: every box near the confidence threshold that flickers, and every
    box that shifts below IoU 0.5, counts as disagreement. The default 0.9 with a window of 3 is therefore a
    starting point, not a calibrated constant: the paper's own point is that users should tune the threshold to
    trade labels for accuracy, and the simulation reports what it would have given up.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    values = _as_float_array(agreements)
    measured = int(np.sum(np.isfinite(values)))
    if values.size < window or measured < window:
        return _not_ready(
            RULE_STABILIZING,
            f"not enough rounds yet: {measured} agreements measured, the rule needs {window} in a row",
        )
    recent = values[-window:]
    shown = ", ".join("n/a" if not math.isfinite(a) else f"{a:.3f}" for a in recent)
    if bool(np.all(recent >= threshold)):
        return StopAdvice(
            RULE_STABILIZING, True, values.size - 1,
            f"predictions stable: agreement {shown} >= {threshold:.2f} for {window} rounds: stop",
        )
    return StopAdvice(
        RULE_STABILIZING, False, None,
        f"predictions still changing: agreement {shown}, need >= {threshold:.2f} for {window} rounds: continue",
    )


# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────
# All rules together: now, and replayed over a finished history
# ─────────────────────────────────────────────────────────────────────────────────────────────────────────────────


def _coerce_history(history: RoundHistory | Mapping[str, Sequence[float]] | None) -> RoundHistory:
    if history is None:
        return RoundHistory()
    if isinstance(history, RoundHistory):
        return history
    # `x or ()` would ask a NumPy array for its truth value; test for None instead.
    def get(key: str) -> Sequence[float]:
        value = history.get(key)
        return () if value is None else value

    return RoundHistory(labeled_counts=get("labeled_counts"), map50=get("map50"), agreements=get("agreements"))


def _advise_one(
    rule: str,
    map50: Sequence[float] | None,
    labeled_counts: Sequence[float] | None,
    agreements: Sequence[float] | None,
    *,
    min_gain: float,
    patience: int,
    sensitivity: float,
    agreement_threshold: float,
    window: int,
) -> StopAdvice:
    if rule == RULE_MIN_GAIN:
        return min_gain_rule(_as_float_array(map50), min_gain=min_gain, patience=patience)
    if rule == RULE_LEARNING_CURVE:
        return learning_curve_stats(_as_float_array(map50), _as_float_array(labeled_counts), min_gain=min_gain).advice
    if rule == RULE_KNEE:
        return knee_rule(_as_float_array(labeled_counts), _as_float_array(map50), sensitivity=sensitivity)
    if rule == RULE_STABILIZING:
        return stabilizing_predictions_rule(_as_float_array(agreements), threshold=agreement_threshold, window=window)
    raise ValueError(f"unknown stopping rule {rule!r}; known: {', '.join(RULES)}")


def advise(
    history: RoundHistory | Mapping[str, Sequence[float]] | None,
    *,
    min_gain: float = DEFAULT_MIN_GAIN,
    patience: int = 1,
    sensitivity: float = 1.0,
    agreement_threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    window: int = DEFAULT_AGREEMENT_WINDOW,
) -> list[StopAdvice]:
    """Every stopping rule's advice for the history so far, in the order of `RULES`.

    `history` is a `RoundHistory` or a mapping with any of the keys "labeled_counts", "map50", "agreements"
    (aligned by round, see the module docstring). Missing or short arrays never raise: the rules that need them
    answer "not enough rounds yet" with `ready=False`.
    """
    h = _coerce_history(history)
    return [
        _advise_one(
            rule, h.map50, h.labeled_counts, h.agreements,
            min_gain=min_gain, patience=patience, sensitivity=sensitivity,
            agreement_threshold=agreement_threshold, window=window,
        )
        for rule in RULES
    ]


def stop_round(
    rule: str,
    map50: Sequence[float] | None,
    labeled_counts: Sequence[float] | None = None,
    agreements: Sequence[float] | None = None,
    *,
    min_gain: float = DEFAULT_MIN_GAIN,
    patience: int = 1,
    sensitivity: float = 1.0,
    agreement_threshold: float = DEFAULT_AGREEMENT_THRESHOLD,
    window: int = DEFAULT_AGREEMENT_WINDOW,
) -> int | None:
    """The first round at which `rule` would have stopped a finished history, or None if it never would have.

    Replays the history prefix by prefix, as the live loop saw it: stop_round = min{ r : rule(history[0..r]) says
    stop }. Round r's prefix holds map50[:r+1], labeled_counts[:r+1] and agreements[:r+1].
    """
    if rule not in RULES:
        raise ValueError(f"unknown stopping rule {rule!r}; known: {', '.join(RULES)}")
    values = _as_float_array(map50)
    labels = _as_float_array(labeled_counts)
    agree = _as_float_array(agreements)
    n_rounds = max(values.size, labels.size, agree.size)
    for last in range(n_rounds):
        advice = _advise_one(
            rule, values[: last + 1], labels[: last + 1], agree[: last + 1],
            min_gain=min_gain, patience=patience, sensitivity=sensitivity,
            agreement_threshold=agreement_threshold, window=window,
        )
        if advice.stop:
            return last
    return None


def replay_stopping(
    map50: Sequence[float],
    labeled_counts: Sequence[float] | None = None,
    agreements: Sequence[float] | None = None,
    **rule_options: float,
) -> list[StopReplay]:
    """For the simulation summary: where each rule (order of `RULES`) would have stopped, and what it gave up.

    map50_given_up = mAP50[R] - mAP50[stop_round] and labels_saved = n[R] - n[stop_round], R the last round.
    `rule_options` are the keyword options of `stop_round` (min_gain, patience, sensitivity, agreement_threshold,
    window).
    """
    values = _as_float_array(map50)
    labels = _as_float_array(labeled_counts)
    replays = []
    for rule in RULES:
        r = stop_round(rule, values, labels, agreements, **rule_options)
        if r is None:
            replays.append(StopReplay(rule, None, None, None, None, None))
            continue
        map_at = float(values[r]) if r < values.size else None
        labels_at = float(labels[r]) if r < labels.size else None
        given_up = float(values[-1] - map_at) if map_at is not None else None
        saved = float(labels[-1] - labels_at) if labels_at is not None else None
        replays.append(StopReplay(rule, r, labels_at, map_at, given_up, saved))
    return replays
