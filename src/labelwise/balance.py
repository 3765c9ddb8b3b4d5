"""Class balance: weights that favour images predicted to hold classes rare in the labeled set, and quotas.

Pure NumPy. Works on a `ScoredPool` (CSR layout) without a Python loop per image.
"""

from __future__ import annotations

import numpy as np

from labelwise.scaling import minmax


def class_presence(pool) -> np.ndarray:
    """(N, n_classes) predicted presence ``P[i, c] = max over kept boxes b of image i of p_{b,c}`` (the sigmoid
    score of class c); 0 for an image with no kept box."""
    n, nc = len(pool), pool.n_classes
    out = np.zeros((n, nc), dtype=np.float64)
    counts = pool.boxes_per_image
    has_box = counts > 0
    if has_box.any():
        # reduceat over non-empty images only; see uncertainty.aggregate_csr for why this is correct with gaps.
        out[has_box] = np.maximum.reduceat(np.asarray(pool.class_scores, dtype=np.float64),
                                           pool.box_offsets[:-1][has_box], axis=0)
    return out


def predicted_classes(pool) -> np.ndarray:
    """(N, n_classes) bool: image i has at least one kept box whose top class is c."""
    out = np.zeros((len(pool), pool.n_classes), dtype=bool)
    if pool.class_scores.shape[0]:
        out[pool.box_image_index, np.argmax(pool.class_scores, axis=1)] = True
    return out


def class_rarity(class_counts: np.ndarray) -> np.ndarray:
    """Rarity of each class in the labeled set from inverse frequency, scaled so the rarest class is 1 and the most
    common 0: ``f_c = 1 / (1 + n_c)``, ``r_c = (f_c - min f) / (max f - min f)``; all zeros when every class has
    the same count (nothing is rare, so nothing is boosted). n_c = labeled box count of class c."""
    counts = np.clip(np.asarray(class_counts, dtype=np.float64).reshape(-1), 0.0, None)
    f = 1.0 / (1.0 + counts)
    return minmax(f)


def rare_class_weights(presence: np.ndarray, class_counts: np.ndarray) -> np.ndarray:
    """Per-image weight ``w_i = 1 + max_c P[i, c] * r_c`` in [1, 2], with P from `class_presence` and r from
    `class_rarity`: an image the model believes holds the rarest labeled class counts up to twice as much.

    Multiplies any non-negative strategy score, so it composes with every strategy. Class-balanced selection in the
    spirit of inverse-frequency re-weighting (e.g. Cui et al. 2019 discuss the effective-number variant).
    """
    presence = np.asarray(presence, dtype=np.float64)
    r = class_rarity(class_counts)
    if presence.shape[1] != r.shape[0]:
        raise ValueError(f"class_counts has {r.shape[0]} classes, the pool has {presence.shape[1]}")
    if presence.shape[0] == 0 or r.shape[0] == 0:
        return np.ones(presence.shape[0])
    return 1.0 + (presence * r[None, :]).max(axis=1)


def quota_order(class_counts: np.ndarray, quotas: dict[int, int]) -> list[tuple[int, int]]:
    """Quota classes as (class, minimum) pairs, rarest labeled class first, so scarce candidates go where they are
    most needed. Raises ValueError on a negative minimum or an unknown class."""
    counts = np.asarray(class_counts).reshape(-1)
    pairs = []
    for c, m in quotas.items():
        c, m = int(c), int(m)
        if m < 0:
            raise ValueError(f"class quota for class {c} must be >= 0, got {m}")
        if not 0 <= c < counts.shape[0]:
            raise ValueError(f"class quota names class {c}, but there are {counts.shape[0]} classes")
        if m:
            pairs.append((c, m))
    return sorted(pairs, key=lambda cm: (counts[cm[0]], cm[0]))
