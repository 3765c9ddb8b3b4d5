"""Min-max scaling of scores, the one helper every score combination uses (pure NumPy, part of the core)."""

from __future__ import annotations

import numpy as np

__all__ = ["minmax"]


def minmax(v: np.ndarray) -> np.ndarray:
    """Scores rescaled to [0, 1]: ``(v - min v) / (max v - min v)``, as a float64 array of the same shape.

    A constant array (every value equal, one value included) gives all zeros: a term that is the same for every
    item carries no preference, so it must add nothing to a weighted sum. An empty array gives an empty array. A NaN
    anywhere makes min and max NaN and so also gives all zeros.
    """
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return v.copy()
    lo, hi = float(v.min()), float(v.max())
    return (v - lo) / (hi - lo) if hi > lo else np.zeros_like(v)
