"""How many labels a strategy saves: learning-curve comparisons for the simulation summary, as pure NumPy/SciPy.

A learning curve is a pair (labeled_counts, map50) aligned by round, labeled counts increasing. The headline figure
the article claims ("30-70% fewer labels") is `label_saving`: the labels a strategy needs to FIRST reach random
sampling's final mAP50, against the labels random itself needed to first reach it,

    saving % = 100 (1 - n_strategy / n_random),   n_x = labels_to_reach(curve_x, m_random(final)).

Both sides are measured the same way, so random against itself saves exactly 0% whatever the shape of its curve
(a plateaued random curve does not flatter the strategies). `area_under_curve` summarises a whole curve in one
number, `mean_curve` aggregates the seeds of one strategy for the tables and the plot band, and `compare_seeds`
gives the paired per-seed savings and areas with their means and Student-t confidence intervals (`mean_ci`).

References: the paired design and the t interval over seeds are the standard ones (e.g. Dror et al., "The Hitchhiker's
Guide to Testing Statistical Significance in NLP", ACL 2018); the label saving follows the "labels to reach a
target performance" measure of the active-learning literature (e.g. Settles, "Active Learning Literature Survey",
2009, section 7).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Curve = tuple[Sequence[float], Sequence[float]]
"""(labeled_counts, map50), aligned by round."""

CONFIDENCE = 0.95
"""Confidence level of every interval in the summary."""


@dataclass(frozen=True)
class LabelSaving:
    """The labels a strategy needs to reach random sampling's final mAP50, and the saving against random.

    target_map50: random's final mAP50 (its last finite round).
    random_labels: labels random needed to FIRST reach `target_map50` (interpolated); at most its final count.
    random_final_labels: random's final labeled count.
    labels_needed: labels the strategy needs to first reach the target (interpolated); None if it never does.
    saving_percent: 100 (1 - labels_needed / random_labels); None if never reached. Negative: it needed more.
    """

    target_map50: float
    random_labels: float
    labels_needed: float | None
    saving_percent: float | None
    random_final_labels: float | None = None


@dataclass(frozen=True)
class MeanCurve:
    """A strategy's learning curve over seeds, aligned by round (truncated to the shortest seed).

    labeled_counts: mean labeled count per round (the seeds normally share it exactly).
    mean, std: mean and population standard deviation of mAP50 over seeds per round.
    low, high: minimum and maximum over seeds per round.
    ci_low, ci_high: the `CONFIDENCE` Student-t interval of the mean per round (`mean_ci`); equal to `mean` with a
        single seed, where no interval exists.
    n_seeds: how many seeds were aggregated.
    """

    labeled_counts: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: int
    ci_low: np.ndarray | None = None
    ci_high: np.ndarray | None = None


@dataclass(frozen=True)
class MeanCI:
    """The mean of per-seed values with its Student-t confidence interval.

        mean = (1/n) Σ x_i,   s = sqrt(Σ (x_i - mean)^2 / (n - 1)),
        [low, high] = mean ∓ t_{(1 + confidence)/2, n - 1} · s / sqrt(n).

    With n = 1 there is no spread to estimate: sd, low, high and half_width are None (no interval is invented).
    n = 0 gives mean None too.
    """

    mean: float | None
    low: float | None
    high: float | None
    half_width: float | None
    sd: float | None
    n: int
    confidence: float = CONFIDENCE


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> MeanCI:
    """Mean and Student-t confidence interval of independent per-seed values (see `MeanCI` for the formula).

    Non-finite values raise: a seed without a value must be decided by the caller (see `compare_seeds` for the
    censoring rule), never silently dropped here.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(x)):
        raise ValueError("mean_ci needs finite values; decide first how a missing seed enters the mean")
    n = int(x.size)
    if n == 0:
        return MeanCI(None, None, None, None, None, 0, confidence)
    mean = float(x.mean())
    if n == 1:
        return MeanCI(mean, None, None, None, None, 1, confidence)
    from scipy.stats import t

    sd = float(x.std(ddof=1))
    half = float(t.ppf((1.0 + confidence) / 2.0, n - 1) * sd / math.sqrt(n))
    return MeanCI(mean, mean - half, mean + half, half, sd, n, confidence)


def _curve_arrays(labeled_counts: Sequence[float], map50: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labeled_counts, dtype=np.float64).reshape(-1)
    values = np.asarray(map50, dtype=np.float64).reshape(-1)
    if labels.size != values.size:
        raise ValueError(f"a learning curve needs one mAP50 per labeled count: {labels.size} vs {values.size}")
    if labels.size and np.any(np.diff(labels) < 0):
        raise ValueError("labeled counts must not decrease from round to round")
    return labels, values


def _finite(labeled_counts: Sequence[float], map50: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    labels, values = _curve_arrays(labeled_counts, map50)
    keep = np.isfinite(labels) & np.isfinite(values)
    return labels[keep], values[keep]


def labels_to_reach(labeled_counts: Sequence[float], map50: Sequence[float], target: float) -> float | None:
    """Labeled images at which the learning curve FIRST reaches `target` mAP50, by linear interpolation; else None.

    With r the first round where mAP50_r >= target:  n* = n_0 if r = 0, otherwise
        n* = n_{r-1} + (target - m_{r-1}) (n_r - n_{r-1}) / (m_r - m_{r-1}),
    the straight line between the two rounds either side of the crossing (m_{r-1} < target <= m_r, so the
    denominator is positive). A curve that reaches the target and then falls back still counts as having reached
    it: those labels were enough once. NaN rounds are skipped.
    """
    labels, values = _finite(labeled_counts, map50)
    reached = np.flatnonzero(values >= target)
    if reached.size == 0:
        return None
    r = int(reached[0])
    if r == 0:
        return float(labels[0])
    n0, n1, m0, m1 = labels[r - 1], labels[r], values[r - 1], values[r]
    return float(n0 + (target - m0) * (n1 - n0) / (m1 - m0))


def _saving(needed: float | None, random_needed: float | None) -> float | None:
    if needed is None or random_needed is None or random_needed <= 0:
        return None
    return float(100.0 * (1.0 - needed / random_needed))


def label_saving(strategy_curve: Curve, random_curve: Curve) -> LabelSaving:
    """Labels a strategy needs to reach random's FINAL mAP50, and the saving in percent against random.

        target = m_random(final)   (random's last finite round),
        n_s = labels_to_reach(strategy, target),   n_r = labels_to_reach(random, target),
        saving % = 100 (1 - n_s / n_r).

    Both label counts are where the curve FIRST reaches the target, measured by the same function: a strategy that
    matches random's final mAP50 with 60% of the labels random needed saves 40%, and random against itself saves
    exactly 0% even when its curve plateaus early (dividing by random's final count instead would let random "save"
    against itself). n_r <= random's final count, since random's final round reaches its own final mAP50. None
    (labels_needed and saving) when the strategy never reaches the target, or when n_r <= 0.
    """
    random_labels, random_map = _finite(*random_curve)
    if random_labels.size == 0:
        raise ValueError("random's learning curve is empty (or has no finite round)")
    target = float(random_map[-1])
    random_needed = labels_to_reach(random_labels, random_map, target)
    assert random_needed is not None  # the final round reaches its own value
    needed = labels_to_reach(strategy_curve[0], strategy_curve[1], target)
    return LabelSaving(target_map50=target, random_labels=random_needed, labels_needed=needed,
                       saving_percent=_saving(needed, random_needed), random_final_labels=float(random_labels[-1]))


def area_under_curve(
    labeled_counts: Sequence[float],
    map50: Sequence[float],
    label_range: tuple[float, float] | None = None,
) -> float:
    """Area under the learning curve normalised by the label range: the curve's mean mAP50 over that range.

        AUC = (1 / (n_b - n_a)) ∫_{n_a}^{n_b} m(n) dn,   m linear between rounds (trapezoid rule),

    with [n_a, n_b] the curve's own label range, or `label_range` so that strategies with different budgets are
    compared over the same labels (the curve is interpolated at the ends; a range outside the curve raises).
    A single round (zero range) returns its mAP50. Lies in [0, 1] like mAP50.
    """
    labels, values = _curve_arrays(labeled_counts, map50)
    if labels.size == 0:
        raise ValueError("an empty learning curve has no area")
    lo, hi = (float(labels[0]), float(labels[-1])) if label_range is None else map(float, label_range)
    if label_range is not None and (lo < labels[0] - 1e-9 or hi > labels[-1] + 1e-9 or hi < lo):
        raise ValueError(f"label range {lo:g}..{hi:g} is not inside the curve's {labels[0]:g}..{labels[-1]:g}")
    if hi - lo <= 0:
        return float(np.interp(lo, labels, values)) if labels.size > 1 else float(values[0])
    inside = (labels > lo) & (labels < hi)
    grid = np.concatenate([[lo], labels[inside], [hi]])
    heights = np.interp(grid, labels, values)
    area = float(np.sum((grid[1:] - grid[:-1]) * (heights[1:] + heights[:-1]) / 2.0))
    return area / (hi - lo)


def mean_curve(curves: Sequence[Curve], confidence: float = CONFIDENCE) -> MeanCurve:
    """Mean learning curve over seeds with its bands, aligned by round index.

    For round r over the S seeds:  mean_r = (1/S) Σ_s m_{s,r},  std_r = sqrt((1/S) Σ_s (m_{s,r} - mean_r)^2),
    low_r = min_s m_{s,r},  high_r = max_s m_{s,r},  labeled_r = (1/S) Σ_s n_{s,r}, and
    ci_r = mean_r ∓ t_{(1 + confidence)/2, S - 1} sqrt(S/(S - 1)) std_r / sqrt(S) (`mean_ci`; none for S = 1).
    Seeds are aligned by round, not by label count, because every seed of a strategy starts from the same initial
    set and adds the same batch size; a seed with fewer finished rounds truncates all to its length, so every point
    of the mean has all seeds behind it.
    """
    if len(curves) == 0:
        raise ValueError("no seeds to average")
    arrays = [_curve_arrays(labels, values) for labels, values in curves]
    n_rounds = min(labels.size for labels, _ in arrays)
    labels = np.stack([labels[:n_rounds] for labels, _ in arrays])
    values = np.stack([values[:n_rounds] for _, values in arrays])
    mean = values.mean(axis=0)
    ci_low, ci_high = mean.copy(), mean.copy()
    if len(curves) > 1:
        for r in range(n_rounds):
            if np.all(np.isfinite(values[:, r])):
                ci = mean_ci(values[:, r], confidence)
                ci_low[r], ci_high[r] = ci.low, ci.high
    return MeanCurve(
        labeled_counts=labels.mean(axis=0),
        mean=mean,
        std=values.std(axis=0),
        low=values.min(axis=0),
        high=values.max(axis=0),
        n_seeds=len(curves),
        ci_low=ci_low,
        ci_high=ci_high,
    )


def paired_savings(strategy_curves: Sequence[Curve], random_curves: Sequence[Curve]) -> list[LabelSaving]:
    """`label_saving` seed by seed: strategy seed s against random seed s (same initial labeled set).

    Pairing by seed removes the variance the shared initial set puts into both curves. A seed that never reaches
    the target has None here; `compare_seeds` decides how it enters the mean (censoring).
    """
    if len(strategy_curves) != len(random_curves):
        raise ValueError(f"seed counts differ: {len(strategy_curves)} vs {len(random_curves)}")
    return [label_saving(s, r) for s, r in zip(strategy_curves, random_curves)]


# -- paired per-seed statistics --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedComparison:
    """One seed of a strategy against the same seed of random (same initial set, same validation split).

    target_map50: random's final mAP50 on this seed. random_labels: labels random needed to first reach it.
    labels_needed: labels the strategy needed to first reach it; when it never did (censored = True), its final
        labeled count plus one round (see `compare_seeds`).
    saving_percent: 100 (1 - labels_needed / random_labels), with the censored labels_needed when censored.
    auc, random_auc: normalised areas under the two curves over the same label range; auc_difference = auc -
        random_auc. final_map50: the strategy's last mAP50.
    """

    target_map50: float
    random_labels: float
    labels_needed: float
    censored: bool
    saving_percent: float
    auc: float
    random_auc: float
    auc_difference: float
    final_map50: float


@dataclass(frozen=True)
class SeedsComparison:
    """A strategy against random over paired seeds: per seed, and the means with confidence intervals.

    saving, auc, auc_difference: `mean_ci` of the per-seed saving_percent (censored seeds included at their
    censored value), auc and auc_difference. n_censored: seeds that never reached random's final mAP50.
    """

    seeds: list[SeedComparison]
    saving: MeanCI
    auc: MeanCI
    auc_difference: MeanCI
    n_censored: int


def censored_labels(labeled_counts: Sequence[float], round_step: float | None = None) -> float:
    """Labels charged to a curve that never reached its target: its final count plus one more round,

        n_cens = n_final + step,   step = round_step, or the curve's last increment n_final - n_{final-1}
        (0 for a single-round curve),

    i.e. the most optimistic assumption that still charges a missed target: the very next round would have
    reached it. The true count is > n_final but unknown, so a saving computed from n_cens overstates the true
    saving whenever more than one further round would have been needed (and understates it by less than one
    round's worth otherwise); it is flagged as censored wherever it is reported.
    """
    labels = np.asarray(labeled_counts, dtype=np.float64).reshape(-1)
    labels = labels[np.isfinite(labels)]
    if labels.size == 0:
        raise ValueError("an empty learning curve has no final count")
    if round_step is None:
        round_step = float(labels[-1] - labels[-2]) if labels.size > 1 else 0.0
    return float(labels[-1] + round_step)


def compare_seeds(
    strategy_curves: Sequence[Curve],
    random_curves: Sequence[Curve],
    *,
    label_range: tuple[float, float] | None = None,
    round_step: float | None = None,
    confidence: float = CONFIDENCE,
) -> SeedsComparison:
    """Paired per-seed label savings and areas of a strategy against random, with their means and intervals.

    For each seed s (strategy curve s against random curve s, which share the initial labeled set):
        target_s = m_random,s(final),  n_r,s = labels_to_reach(random_s, target_s),
        n_s = labels_to_reach(strategy_s, target_s), or `censored_labels(strategy_s)` if it never gets there,
        saving_s = 100 (1 - n_s / n_r,s),
        AUC_s, AUC_r,s = `area_under_curve` over `label_range` (default: the range both curves cover),
        ΔAUC_s = AUC_s - AUC_r,s.
    The means over seeds come with Student-t intervals (`mean_ci`); with one seed there is no interval.

    Censoring decision: a seed that never reaches the target is neither dropped (that would keep only the lucky
    seeds and bias the mean upwards) nor given an invented large number. It enters the mean at the saving it
    would have had had it reached the target in the very next round (`censored_labels`). With the strategy and
    random on the same budget that value is negative (the strategy needed more than random's whole budget), but
    it is still optimistic for a strategy that would have needed several more rounds, so the mean is, if anything,
    favourable to the strategy; `n_censored` is reported beside it so that a reader can discount it.
    """
    if len(strategy_curves) != len(random_curves):
        raise ValueError(f"seed counts differ: {len(strategy_curves)} vs {len(random_curves)}")
    seeds = []
    for s_curve, r_curve in zip(strategy_curves, random_curves):
        basic = label_saving(s_curve, r_curve)
        s_labels, s_map = _finite(*s_curve)
        r_labels, r_map = _finite(*r_curve)
        censored = basic.labels_needed is None
        needed = censored_labels(s_labels, round_step) if censored else float(basic.labels_needed)
        saving = _saving(needed, basic.random_labels)
        if saving is None:
            raise ValueError("random needed no labels to reach its own final mAP50; the saving is undefined")
        lo, hi = label_range if label_range is not None else (
            max(s_labels[0], r_labels[0]), min(s_labels[-1], r_labels[-1]))
        if hi < lo:
            raise ValueError(f"the strategy's and random's curves share no label range ({lo:g} > {hi:g})")
        auc = area_under_curve(s_labels, s_map, (lo, hi))
        r_auc = area_under_curve(r_labels, r_map, (lo, hi))
        seeds.append(SeedComparison(target_map50=basic.target_map50, random_labels=basic.random_labels,
                                    labels_needed=needed, censored=censored, saving_percent=saving, auc=auc,
                                    random_auc=r_auc, auc_difference=auc - r_auc, final_map50=float(s_map[-1])))
    return SeedsComparison(
        seeds=seeds,
        saving=mean_ci([s.saving_percent for s in seeds], confidence),
        auc=mean_ci([s.auc for s in seeds], confidence),
        auc_difference=mean_ci([s.auc_difference for s in seeds], confidence),
        n_censored=sum(s.censored for s in seeds),
    )


@dataclass(frozen=True)
class LabelsToReach:
    """Labels each seed needed to first reach a target, and their mean.

    per_seed: labels_to_reach per seed (None where the seed never reached the target).
    mean: mean over seeds when EVERY seed reached the target, else None (a mean of the lucky seeds would flatter).
    n_reached: how many seeds reached it.
    """

    target: float
    per_seed: list[float | None]
    mean: float | None
    n_reached: int


def labels_to_reach_seeds(curves: Sequence[Curve], target: float) -> LabelsToReach:
    """`labels_to_reach` for every seed of a strategy, e.g. target = 0.9 x the full-pool model's mAP50."""
    per_seed = [labels_to_reach(n, m, target) for n, m in curves]
    reached = [v for v in per_seed if v is not None]
    mean = float(np.mean(reached)) if per_seed and len(reached) == len(per_seed) else None
    return LabelsToReach(target=float(target), per_seed=per_seed, mean=mean, n_reached=len(reached))


# -- two models against each other, over seeds (the dividend experiment) ---------------------------------------------

WITHIN_NOISE = "within noise"
NOISE_UNKNOWN = "noise unknown"


@dataclass(frozen=True)
class ArmComparison:
    """Arm a against arm b (e.g. mAP50 of the model trained on the strategy's batch against the one trained on a
    random batch), each trained once per seed, seed s of both arms paired (same seed, same start, same settings).

    difference: `mean_ci` of the paired per-seed differences a_s - b_s.
    noise_sd: the seed-to-seed noise, the larger of the two arms' sample standard deviations over seeds; None with
        one seed (no spread can be measured).
    verdict: "better" / "worse" (a over b, beyond the noise), WITHIN_NOISE, or NOISE_UNKNOWN (one seed).
    text: the verdict in words, with the numbers it rests on.
    """

    difference: MeanCI
    noise_sd: float | None
    verdict: str
    text: str


def compare_arms(a: Sequence[float], b: Sequence[float], confidence: float = CONFIDENCE,
                 what: str = "mAP50", names: tuple[str, str] = ("the strategy", "random")) -> ArmComparison:
    """Is arm a different from arm b by more than the seed-to-seed noise? Pure: numbers in, verdict out.

    With n >= 2 paired seeds, the difference d = mean(a_s - b_s) counts only when BOTH
      - |d| > noise_sd (larger than what changing the seed alone moves either arm by), and
      - the `confidence` Student-t interval of the paired differences excludes 0;
    otherwise it is WITHIN_NOISE. With one seed nothing measures the noise: NOISE_UNKNOWN, and the text suggests
    repeating the trainings on 3 seeds.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.size != y.size or x.size == 0:
        raise ValueError(f"compare_arms needs the same number (>= 1) of seeds per arm, got {x.size} and {y.size}")
    diff = mean_ci(x - y, confidence)
    first, second = names
    d = diff.mean
    if x.size == 1:
        return ArmComparison(diff, None, NOISE_UNKNOWN,
                             f"{NOISE_UNKNOWN}: {first} minus {second} is {d:+.3f} {what} on one seed, and one seed "
                             "cannot tell a real difference from seed-to-seed noise; run it with --seeds 3 (the "
                             "trainings done so far are kept)")
    noise = float(max(x.std(ddof=1), y.std(ddof=1)))
    ci = f"{diff.confidence:.0%} CI {diff.low:+.3f} to {diff.high:+.3f} over {x.size} seeds"
    if abs(d) <= noise:
        return ArmComparison(diff, noise, WITHIN_NOISE,
                             f"{WITHIN_NOISE}: {first} minus {second} is {d:+.3f} {what} ({ci}), no larger than the "
                             f"seed-to-seed noise (sd {noise:.3f})")
    if diff.low <= 0.0 <= diff.high:
        return ArmComparison(diff, noise, WITHIN_NOISE,
                             f"{WITHIN_NOISE}: {first} minus {second} is {d:+.3f} {what}, but its {ci} includes 0 "
                             f"(seed-to-seed sd {noise:.3f})")
    verdict = "better" if d > 0 else "worse"
    return ArmComparison(diff, noise, verdict,
                         f"{first} is {verdict} than {second} by {abs(d):.3f} {what} ({ci}), beyond the seed-to-seed "
                         f"noise (sd {noise:.3f})")
