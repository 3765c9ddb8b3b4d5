"""How many labels a strategy saves: learning-curve comparisons for the simulation summary, as pure NumPy.

A learning curve is a pair (labeled_counts, map50) aligned by round, labeled counts increasing. The headline figure
the article claims ("30-70% fewer labels") is `label_saving`: the labels a strategy needs to reach random sampling's
final mAP50, against the labels random spent to get there. `area_under_curve` summarises a whole curve in one
number, and `mean_curve` aggregates the seeds of one strategy for the tables and the plot band.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Curve = tuple[Sequence[float], Sequence[float]]
"""(labeled_counts, map50), aligned by round."""


@dataclass(frozen=True)
class LabelSaving:
    """The labels a strategy needs to reach random sampling's final mAP50, and the saving against random.

    target_map50: random's final mAP50.
    random_labels: random's final labeled count (what random spent to get to `target_map50`).
    labels_needed: labels the strategy needs to first reach the target (interpolated); None if it never does.
    saving_percent: 100 (1 - labels_needed / random_labels); None if never reached. Negative: it needed more.
    """

    target_map50: float
    random_labels: float
    labels_needed: float | None
    saving_percent: float | None


@dataclass(frozen=True)
class MeanCurve:
    """A strategy's learning curve over seeds, aligned by round (truncated to the shortest seed).

    labeled_counts: mean labeled count per round (the seeds normally share it exactly).
    mean, std: mean and population standard deviation of mAP50 over seeds per round.
    low, high: minimum and maximum over seeds per round (the band the plot draws).
    n_seeds: how many seeds were aggregated.
    """

    labeled_counts: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    n_seeds: int


def _curve_arrays(labeled_counts: Sequence[float], map50: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labeled_counts, dtype=np.float64).reshape(-1)
    values = np.asarray(map50, dtype=np.float64).reshape(-1)
    if labels.size != values.size:
        raise ValueError(f"a learning curve needs one mAP50 per labeled count: {labels.size} vs {values.size}")
    if labels.size and np.any(np.diff(labels) < 0):
        raise ValueError("labeled counts must not decrease from round to round")
    return labels, values


def labels_to_reach(labeled_counts: Sequence[float], map50: Sequence[float], target: float) -> float | None:
    """Labeled images at which the learning curve FIRST reaches `target` mAP50, by linear interpolation; else None.

    With r the first round where mAP50_r >= target:  n* = n_0 if r = 0, otherwise
        n* = n_{r-1} + (target - m_{r-1}) (n_r - n_{r-1}) / (m_r - m_{r-1}),
    the straight line between the two rounds either side of the crossing (m_{r-1} < target <= m_r, so the
    denominator is positive). A curve that reaches the target and then falls back still counts as having reached
    it: those labels were enough once. NaN rounds are skipped.
    """
    labels, values = _curve_arrays(labeled_counts, map50)
    keep = np.isfinite(labels) & np.isfinite(values)
    labels, values = labels[keep], values[keep]
    reached = np.flatnonzero(values >= target)
    if reached.size == 0:
        return None
    r = int(reached[0])
    if r == 0:
        return float(labels[0])
    n0, n1, m0, m1 = labels[r - 1], labels[r], values[r - 1], values[r]
    return float(n0 + (target - m0) * (n1 - n0) / (m1 - m0))


def label_saving(strategy_curve: Curve, random_curve: Curve) -> LabelSaving:
    """Labels a strategy needs to reach random's FINAL mAP50, and the saving in percent against random's budget.

        target = m_random(final);   needed = labels_to_reach(strategy, target);
        saving % = 100 (1 - needed / n_random(final)).

    A strategy that matches random's final mAP50 with 60% of random's labels saves 40%. The denominator is random's
    final label count, the budget random actually spent (the article's "random sampling to match AL mAP"), even if
    a noisy random curve touched the same mAP50 earlier.
    """
    random_labels, random_map = _curve_arrays(*random_curve)
    if random_labels.size == 0:
        raise ValueError("random's learning curve is empty")
    target = float(random_map[-1])
    budget = float(random_labels[-1])
    needed = labels_to_reach(strategy_curve[0], strategy_curve[1], target)
    saving = None if needed is None or budget <= 0 else float(100.0 * (1.0 - needed / budget))
    return LabelSaving(target_map50=target, random_labels=budget, labels_needed=needed, saving_percent=saving)


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


def mean_curve(curves: Sequence[Curve]) -> MeanCurve:
    """Mean learning curve over seeds with its band, aligned by round index.

    For round r over the S seeds:  mean_r = (1/S) Σ_s m_{s,r},  std_r = sqrt((1/S) Σ_s (m_{s,r} - mean_r)^2),
    low_r = min_s m_{s,r},  high_r = max_s m_{s,r},  labeled_r = (1/S) Σ_s n_{s,r}.
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
    return MeanCurve(
        labeled_counts=labels.mean(axis=0),
        mean=values.mean(axis=0),
        std=values.std(axis=0),
        low=values.min(axis=0),
        high=values.max(axis=0),
        n_seeds=len(curves),
    )


def paired_savings(strategy_curves: Sequence[Curve], random_curves: Sequence[Curve]) -> list[LabelSaving]:
    """`label_saving` seed by seed: strategy seed s against random seed s (same initial labeled set).

    Pairing by seed removes the variance the shared initial set puts into both curves; report the mean and the
    spread of the `saving_percent` values (a seed that never reaches the target has None and should be counted
    as a failure, not dropped).
    """
    if len(strategy_curves) != len(random_curves):
        raise ValueError(f"seed counts differ: {len(strategy_curves)} vs {len(random_curves)}")
    return [label_saving(s, r) for s, r in zip(strategy_curves, random_curves)]
