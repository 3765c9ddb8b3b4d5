"""Named strategy settings: whole `strategy:` sections of labelwise.yaml under one name.

A preset is what `labelwise init` writes as the default, what `labelwise simulate --strategies` accepts beside the
plain strategy names, and what the benchmarks compare. Each value is a plain mapping, exactly as it would be written
under `strategy:` in labelwise.yaml, which may also name a preset instead (`strategy: default`). Checked like any
`strategy:` section when labelwise.yaml is loaded (`labelwise.config`, against `labelwise.selection.StrategyConfig`).
"""

from __future__ import annotations

from typing import Any

#: The article's pipeline as the article defines it: its least confidence (1 - the lowest top score among boxes
#: kept at 0.25, an image with none scoring 1.0), blended 0.7 / 0.3 with the distance to the image's own k-means
#: centroid, no near-duplicate filter.
ARTICLE: dict[str, Any] = {
    "name": "hybrid",
    "uncertainty": "article_least_confidence",
    "empty_policy": "fixed",
    "empty_value": 1.0,
    "diversity": "centroid",
    "alpha": 0.7,
    "beta": 0.3,
    "dedup_threshold": None,
    "dedup_hamming": None,
    "cold_start": "random",
}

#: labelwise's default: chosen by the simulations recorded in benchmarks/RESULTS.md (issue 8).
DEFAULT: dict[str, Any] = {
    "name": "hybrid",
    "uncertainty": "detection_and_confusion",
    "aggregation": "sum",
    "cold_start": "typical",
}

PRESETS: dict[str, dict[str, Any]] = {
    "article": ARTICLE,
    "default": DEFAULT,
}


def resolve(name_or_preset: str) -> dict[str, Any]:
    """The strategy mapping for a preset name (a copy), or ``{"name": name}`` for a plain strategy name."""
    if name_or_preset in PRESETS:
        return dict(PRESETS[name_or_preset])
    return {"name": name_or_preset}
