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
