"""The simulation's and the report's figures, as PNG files, from plain arrays and dicts.

Drawn with Matplotlib's object API on an Agg canvas (no pyplot, so no global figure state and no display is ever
needed, and the functions are safe to call from worker threads). Every file is written atomically: the PNG is
rendered in memory and moved into place, so a report never links a half-written image.

The output size is exact: `figsize` inches times `dpi` pixels, never cropped ("tight" bounding boxes change the
size from one plot to the next).
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from labelwise.fileio import atomic_write_bytes
from labelwise.savings import Curve, mean_curve

RARE_FRACTION = 0.1
"""Without an explicit list, a class is rare when it has at most this fraction of the commonest class's boxes
(on the aquarium photographs: puffin, stingray and starfish against fish)."""

_RARE_COLOUR = "#c0392b"
_REFERENCE_COLOUR = "#d62728"
_BANDS = {"ci": "band: 95% CI of the mean over seeds", "minmax": "band: min-max over seeds",
          "std": "band: mean ± 1 sd over seeds"}


def _save(fig: Figure, out: Path, dpi: int) -> Path:
    out = Path(out)
    buffer = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches the Agg canvas: rendering never looks for a display backend
    fig.savefig(buffer, format="png", dpi=dpi)
    atomic_write_bytes(out, buffer.getvalue())
    return out


_PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def _strategy_styles(strategies: Sequence[str]) -> dict[str, dict]:
    """Colour and line style per strategy; the same strategy list gives the same colours in every figure."""
    styles = {}
    others = 0
    for name in strategies:
        # Random is the baseline every claim is measured against: always the same grey dashes, and it does not
        # use up a palette colour, so the first real strategy is blue whether random is listed first or not.
        if name.lower() == "random":
            styles[name] = {"color": "#555555", "linestyle": "--"}
        else:
            styles[name] = {"color": _PALETTE[others % len(_PALETTE)], "linestyle": "-"}
            others += 1
    return styles


def learning_curves(
    curves: Mapping[str, Sequence[Curve]],
    out: Path,
    target: float | None = None,
    *,
    stopping_marks: Mapping[str, float] | None = None,
    reference: float | None = None,
    reference_label: str = "full pool",
    band: str = "ci",
    title: str | None = "Learning curves",
    ylabel: str = "mAP50",
    xlabel: str = "labeled images",
    figsize: tuple[float, float] = (8.0, 5.0),
    dpi: int = 100,
) -> Path:
    """mAP50 against labeled images: one line per strategy, the mean over seeds with a band, written to `out`.

    curves: strategy -> one (labeled_counts, map50) per seed. Seeds are aligned by round (`savings.mean_curve`):
        line = mean_r, band = the 95% Student-t interval of the mean over seeds (`band="ci"`, the default),
        [min_r, max_r] over seeds (`band="minmax"`) or mean_r ± std_r (`band="std"`). The legend names the band;
        a strategy with a single seed has none.
    target: a horizontal line, e.g. random's final mAP50 (the level `label_saving` measures labels to).
    reference: another horizontal line, e.g. the mAP50 of a model trained on the whole pool, labelled
        `reference_label`.
    stopping_marks: label -> labeled count, drawn as vertical dotted lines (e.g. where each stopping rule stopped).
    Returns `out`; the PNG is figsize × dpi pixels.
    """
    if band not in _BANDS:
        raise ValueError(f"band must be one of {', '.join(_BANDS)}, got {band!r}")
    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    styles = _strategy_styles(list(curves))
    banded = False
    for strategy, seeds in curves.items():
        if len(seeds) == 0:
            continue
        summary = mean_curve(seeds)
        style = styles[strategy]
        label = strategy if summary.n_seeds == 1 else f"{strategy} (n={summary.n_seeds})"
        ax.plot(summary.labeled_counts, summary.mean, marker="o", markersize=3, label=label, **style)
        if band == "ci":
            low, high = summary.ci_low, summary.ci_high
        elif band == "minmax":
            low, high = summary.low, summary.high
        else:
            low, high = summary.mean - summary.std, summary.mean + summary.std
        if summary.n_seeds > 1:
            ax.fill_between(summary.labeled_counts, low, high, color=style["color"], alpha=0.18, linewidth=0)
            banded = True
    if target is not None and math.isfinite(target):
        ax.axhline(target, color="black", linewidth=0.8, linestyle=":", label=f"target {target:.3f}")
    if reference is not None and math.isfinite(reference):
        ax.axhline(reference, color=_REFERENCE_COLOUR, linewidth=1.2, linestyle="-.",
                   label=f"{reference_label} {reference:.3f}")
    for name, labels in (stopping_marks or {}).items():
        ax.axvline(labels, color="#7f7f7f", linewidth=0.8, linestyle=(0, (1, 2)))
        # Text in axes-fraction y so the mark's name stays inside the plot whatever the mAP range.
        ax.text(labels, 0.02, f" {name}", rotation=90, va="bottom", ha="right", fontsize=7, color="#555555",
                transform=ax.get_xaxis_transform())
    levels = [v for v in (target, reference) if v is not None and math.isfinite(v)]
    if levels:  # horizontal lines do not widen the y range: keep them in view
        low, high = ax.get_ylim()
        margin = 0.05 * max(high - low, 1e-3)
        ax.set_ylim(min(low, min(levels) - margin), max(high, max(levels) + margin))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if banded:
        handles.append(Patch(facecolor="#7f7f7f", alpha=0.3, label=_BANDS[band]))
        labels.append(_BANDS[band])
    if handles:
        ax.legend(handles, labels, loc="lower right", fontsize=8)
    fig.tight_layout()  # arranges inside the fixed canvas; unlike bbox_inches="tight" it keeps the pixel size
    return _save(fig, out, dpi)


def rare_classes_from_counts(class_counts: Mapping[str, float], fraction: float = RARE_FRACTION) -> list[str]:
    """Classes with at most `fraction` of the commonest class's box count: count_c <= fraction · max_k count_k."""
    if not class_counts:
        return []
    most = max(class_counts.values())
    return [name for name, count in class_counts.items() if count <= fraction * most]


def per_class_ap(
    ap: Mapping[str, Mapping[str, float]],
    out: Path,
    *,
    rare_classes: Sequence[str] | None = None,
    class_counts: Mapping[str, float] | None = None,
    title: str | None = "AP50 per class",
    ylabel: str = "AP50",
    figsize: tuple[float, float] = (10.0, 5.0),
    dpi: int = 100,
) -> Path:
    """Grouped bars of AP50 per class, one bar per strategy, rare classes highlighted; written to `out`.

    ap: strategy -> class name -> AP50 (a missing class draws no bar).
    class_counts: class -> labeled boxes; orders the classes from commonest to rarest, and, when `rare_classes`
        is not given, picks the rare ones (`rare_classes_from_counts`: at most 10% of the commonest class).
    Rare classes get a shaded background and red tick labels, since they are where the article claims active
    learning helps most. Returns `out`; the PNG is figsize × dpi pixels.
    """
    strategies = list(ap)
    classes: list[str] = []
    for per_class in ap.values():
        classes.extend(name for name in per_class if name not in classes)
    if class_counts:
        classes.extend(name for name in class_counts if name not in classes)
        classes.sort(key=lambda name: -class_counts.get(name, 0))
    rare = set(rare_classes) if rare_classes is not None else set(rare_classes_from_counts(class_counts or {}))

    fig = Figure(figsize=figsize, dpi=dpi)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(classes), dtype=np.float64)
    width = 0.8 / max(len(strategies), 1)
    for i, class_name in enumerate(classes):
        if class_name in rare:
            ax.axvspan(i - 0.45, i + 0.45, color=_RARE_COLOUR, alpha=0.08, linewidth=0)
    styles = _strategy_styles(strategies)
    for index, strategy in enumerate(strategies):
        heights = [ap[strategy].get(name, np.nan) for name in classes]
        offset = (index - (len(strategies) - 1) / 2) * width
        ax.bar(x + offset, heights, width=width, label=strategy, color=styles[strategy]["color"])
    ax.set_xticks(x)
    ax.set_xticklabels(classes, rotation=30 if len(classes) > 6 else 0, ha="right" if len(classes) > 6 else "center")
    for tick, class_name in zip(ax.get_xticklabels(), classes):
        if class_name in rare:
            tick.set_color(_RARE_COLOUR)
            tick.set_fontweight("bold")
    ax.set_ylim(0, 1.0)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if rare:
        handles.append(Patch(facecolor=_RARE_COLOUR, alpha=0.2, label="rare class"))
        labels.append("rare class")
    if handles:
        ax.legend(handles, labels, loc="upper right", fontsize=8)
    fig.tight_layout()
    return _save(fig, out, dpi)


def drift(
    days: Sequence[str],
    images: Sequence[int],
    mean_conf: Mapping[str, Sequence[float]],
    detections_per_image: Mapping[str, Sequence[float]],
    flag_share: Mapping[str, Sequence[float]],
    out: Path,
    *,
    baseline_conf: Mapping[str, float | None] | None = None,
    baseline_rate: Mapping[str, float] | None = None,
    expected_share: float | None = None,
    model_changes: Sequence[int] = (),
    title: str | None = "Production drift against the validation set",
    figsize: tuple[float, float] = (10.0, 9.0),
    dpi: int = 100,
) -> Path:
    """What `labelwise monitor` saw per day, in three panels sharing the day axis; written to `out`.

    1. mean confidence of each class's detections per day (solid), the same on the validation set (dashed, same
       colour); a class with no detection that day has no point;
    2. detections per image of each class per day, against the validation set's (dashed);
    3. the share of the day's images that met each flagging rule (and, in black, a series whose name starts with
       "any": any of them), against `expected_share`, the validation set's share per rule (1 - quantile).
    days: the x axis (one label per day, with its image count below); model_changes: indices of days whose first
    image was scored by another model than the day before (a dotted vertical line). NaN draws nothing. Returns `out`;
    the PNG is figsize × dpi pixels.
    """
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = [fig.add_subplot(3, 1, i + 1) for i in range(3)]
    x = np.arange(len(days), dtype=np.float64)
    colours = {name: _PALETTE[i % len(_PALETTE)] for i, name in enumerate(mean_conf)}
    panels = ((axes[0], mean_conf, baseline_conf or {}, "mean confidence"),
              (axes[1], detections_per_image, baseline_rate or {}, "detections per image"))
    for ax, series, baseline, ylabel in panels:
        for name, values in series.items():
            colour = colours.get(name, "#555555")
            ax.plot(x, np.asarray(values, dtype=np.float64), marker="o", markersize=3, color=colour, label=name)
            level = baseline.get(name)
            if level is not None and math.isfinite(level):
                ax.axhline(level, color=colour, linewidth=0.9, linestyle="--", alpha=0.7)
        ax.set_ylabel(ylabel)
    axes[0].set_ylim(0, 1.0)
    axes[0].plot([], [], color="#555555", linestyle="--", label="validation set")
    axes[0].legend(loc="lower left", fontsize=7, ncol=min(4, len(mean_conf) + 1))
    for i, (name, values) in enumerate(flag_share.items()):
        # the share meeting any rule (a name starting with "any"): the line that matters, in black
        style = ({"color": "black", "linewidth": 2.0} if name.startswith("any")
                 else {"color": _PALETTE[(i + 2) % len(_PALETTE)], "linewidth": 1.2})
        axes[2].plot(x, np.asarray(values, dtype=np.float64), marker="o", markersize=3, label=name, **style)
    if expected_share is not None:
        axes[2].axhline(expected_share, color="#7f7f7f", linestyle="--", linewidth=0.9,
                        label=f"validation set ({expected_share:.0%})")
    axes[2].set_ylim(0, 1.0)
    axes[2].set_ylabel("share of images flagged")
    axes[2].legend(loc="upper left", fontsize=7, ncol=3)
    for ax in axes:
        for index in model_changes:
            ax.axvline(index - 0.5, color="#7f7f7f", linewidth=0.8, linestyle=(0, (1, 2)))
        ax.grid(True, alpha=0.3)
        ax.set_xticks(x)
        ax.set_xticklabels([])
        if len(days):
            ax.set_xlim(-0.5, len(days) - 0.5)
    axes[2].set_xticklabels([f"{d}\n{n} img" for d, n in zip(days, images)],
                            rotation=30 if len(days) > 8 else 0, fontsize=7)
    if title:
        axes[0].set_title(title)
    fig.tight_layout()
    return _save(fig, out, dpi)


def dividend_bars(
    map50: Mapping[str, Sequence[float]],
    gain_per_100: Mapping[str, float | None],
    out: Path,
    *,
    baseline: float | None = None,
    title: str | None = "Strategy batch vs random batch",
    figsize: tuple[float, float] = (8.0, 3.6),
    dpi: int = 100,
) -> Path:
    """The dividend experiment in two bar panels: mAP50 (bar = mean over seeds, a dot per seed, the current
    model's mAP50 as a dashed line) and the mAP50 gain per 100 labels, one bar per arm; written to `out`.

    map50: arm -> per-seed mAP50; gain_per_100: arm -> gain (None draws no bar). An arm named "random" is grey,
    as in every other figure."""
    arms = list(map50)
    styles = _strategy_styles(arms)
    fig = Figure(figsize=figsize, dpi=dpi)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    x = np.arange(len(arms), dtype=np.float64)
    for i, arm in enumerate(arms):
        values = np.asarray(map50[arm], dtype=np.float64)
        colour = styles[arm]["color"]
        if values.size:
            mean = float(values.mean())
            left.bar(x[i], mean, width=0.6, color=colour)
            # the value at the bar's foot, where the per-seed dots never cover it
            left.text(x[i], 0.02, f"{mean:.3f}", ha="center", va="bottom", fontsize=9, color="white",
                      fontweight="bold")
            if values.size > 1:
                left.scatter(np.full(values.size, x[i]), values, color="black", s=12, zorder=3)
        gain = gain_per_100.get(arm)
        if gain is not None and math.isfinite(gain):
            right.bar(x[i], gain, width=0.6, color=colour)
            right.annotate(f"{gain:+.3f}", (x[i], gain), xytext=(0, 3 if gain >= 0 else -11),
                           textcoords="offset points", ha="center", fontsize=8)
    if baseline is not None:
        left.axhline(baseline, color=_REFERENCE_COLOUR, linestyle="--", linewidth=1, label="current model")
        left.legend(loc="upper right", fontsize=8)
    right.axhline(0.0, color="black", linewidth=0.8)
    right.margins(y=0.15)  # room for the value labels
    for ax, ylabel in ((left, "mAP50"), (right, "mAP50 gain per 100 labels")):
        ax.set_xticks(x)
        ax.set_xticklabels(arms)
        ax.set_ylabel(ylabel)
        ax.grid(True, axis="y", alpha=0.3)
    left.set_ylim(0, 1.0)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out, dpi)
