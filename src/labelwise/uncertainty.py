"""Per-box and per-image uncertainty of a detector's class scores. Pure NumPy; higher = more informative.

YOLO (v8 and later) scores every class with an independent sigmoid, so a box's score row does not sum to 1. The
classic measures (least confidence, margin, entropy; Settles 2009, "Active Learning Literature Survey") are defined on a
probability distribution, so `least_confidence`, `margin` and `entropy` first normalise each row to sum to 1:
``q_c = p_c / sum_c' p_c'``. A row that already sums to 1 (a softmax) is unchanged, so on such rows the results equal
the classic definitions. A row that is all zeros carries no evidence for any class and is read as the uniform
distribution, the maximally uncertain one (never a division by zero). `binary_entropy` is the alternative that keeps
the sigmoids as they are: the entropy of the product of independent Bernoulli variables.

Per-image scores come from the per-box scores with `aggregate` (one image) or `aggregate_csr` (a whole
`ScoredPool`, vectorised). An image with no kept box gets its score from an explicit policy, see `empty_image_scores`.
"""

from __future__ import annotations

import numpy as np

MEASURES = ("least_confidence", "margin", "entropy", "binary_entropy")
AGGREGATIONS = ("max", "mean_top_n", "mean", "sum")
EMPTY_POLICIES = ("near_miss", "fixed")


def normalise_rows(p: np.ndarray) -> np.ndarray:
    """Rows of `p` rescaled to sum to 1: ``q_c = p_c / sum_c' p_c'`` (float64).

    Negative entries (not expected from sigmoids) are clipped to 0. An all-zero row becomes uniform, ``q_c = 1/C``.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, None)
    if p.ndim != 2:
        raise ValueError(f"class scores must be a 2-D (n_boxes, n_classes) array, got shape {p.shape}")
    if p.shape[1] == 0:
        raise ValueError("class scores need at least one class column")
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


def least_confidence(p: np.ndarray) -> np.ndarray:
    """Least confidence per box: ``1 - max_c q_c`` on the row-normalised scores q (see module docstring).

    Settles 2009; the article's Strategy 1. Range [0, 1 - 1/C].
    """
    q = normalise_rows(p)
    return 1.0 - q.max(axis=1)


def margin(p: np.ndarray) -> np.ndarray:
    """Margin uncertainty per box: ``1 - (q_top1 - q_top2)`` on the row-normalised scores q.

    Scheffer et al. 2001 (margin sampling). With one class there is no runner-up, so ``q_top2 = 0``. Range [0, 1].
    """
    q = normalise_rows(p)
    if q.shape[1] == 1:
        return 1.0 - q[:, 0]
    top2 = np.partition(q, q.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy per box in nats: ``-sum_c q_c ln q_c`` on the row-normalised scores q (0 ln 0 = 0).

    Shannon 1948; Settles 2009. Range [0, ln C].
    """
    q = normalise_rows(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -terms.sum(axis=1)


def binary_entropy(p: np.ndarray, reduce: str = "sum") -> np.ndarray:
    """Per-class binary entropy of independent sigmoid scores, ``H(p_c) = -p_c ln p_c - (1 - p_c) ln(1 - p_c)``.

    No normalisation: each class is its own Bernoulli variable, as YOLO trains it (binary cross-entropy per class).
    `reduce`: "sum" (default) gives ``sum_c H(p_c)``, the entropy of the joint of the independent Bernoullis; "max"
    the most uncertain class; "mean" the average; "none" the (n_boxes, n_classes) matrix. Scores are clipped to [0, 1].
    """
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    if p.ndim != 2:
        raise ValueError(f"class scores must be a 2-D (n_boxes, n_classes) array, got shape {p.shape}")
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
              + np.where(p < 1, (1 - p) * np.log(np.where(p < 1, 1 - p, 1.0)), 0.0))
    if reduce == "sum":
        return h.sum(axis=1)
    if reduce == "max":
        return h.max(axis=1) if h.shape[1] else np.zeros(h.shape[0])
    if reduce == "mean":
        return h.mean(axis=1)
    if reduce == "none":
        return h
    raise ValueError(f"unknown reduce {reduce!r}; expected one of sum, max, mean, none")


def box_uncertainty(class_scores: np.ndarray, measure: str = "least_confidence") -> np.ndarray:
    """Per-box uncertainty of a (n_boxes, n_classes) score array under `measure` (one of MEASURES).

    Single-class models: row normalisation would make every box certain (q = 1), so a one-column array is read as
    the two-way distribution ``[p, 1 - p]`` (object vs background) before least_confidence / margin / entropy.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; expected one of {', '.join(MEASURES)}")
    p = np.asarray(class_scores, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"class scores must be 2-D, got shape {p.shape}")
    if measure == "binary_entropy":
        return binary_entropy(p)
    if p.shape[1] == 1:
        s = np.clip(p, 0.0, 1.0)
        p = np.concatenate([s, 1.0 - s], axis=1)
    return {"least_confidence": least_confidence, "margin": margin, "entropy": entropy}[measure](p)


def near_miss_scores(max_candidate_score: np.ndarray, measure: str = "least_confidence") -> np.ndarray:
    """Uncertainty of images with no kept box, from how close the model came to keeping one.

    With s the highest class score of any candidate before the confidence threshold, the image is scored as one box
    with the two-way distribution ``[s, 1 - s]`` (something vs nothing) under the same `measure`:
    least_confidence ``1 - max(s, 1 - s)``, margin ``1 - |2s - 1|``, entropy and binary_entropy
    ``-s ln s - (1 - s) ln(1 - s)``. A model that saw nothing (s = 0) is certain the image is empty (score 0); one
    that almost kept a box (s near 0.5) is maximally unsure.
    """
    s = np.clip(np.asarray(max_candidate_score, dtype=np.float64).reshape(-1), 0.0, 1.0)
    two_way = np.stack([s, 1.0 - s], axis=1)
    if measure == "binary_entropy":
        return binary_entropy(s[:, None])
    return box_uncertainty(two_way, measure)


def empty_image_scores(max_candidate_score: np.ndarray, measure: str = "least_confidence",
                       policy: str = "near_miss", value: float = 1.0) -> np.ndarray:
    """Scores for images with no kept box under an explicit policy (never an implicit 0 or 1).

    "near_miss" (default): `near_miss_scores` of the highest pre-threshold candidate score.
    "fixed": the constant `value` for every empty image (the article used 1.0, which floods a batch with blank
    frames; it is kept as an opt-in).
    """
    n = np.asarray(max_candidate_score).reshape(-1).shape[0]
    if policy == "near_miss":
        return near_miss_scores(max_candidate_score, measure)
    if policy == "fixed":
        return np.full(n, float(value))
    raise ValueError(f"unknown empty-image policy {policy!r}; expected one of {', '.join(EMPTY_POLICIES)}")


def aggregate(box_scores: np.ndarray, method: str = "max", n: int = 3, empty: float | None = None) -> float:
    """One image's score from its per-box scores.

    "max": ``max_b u_b``, the weakest link (the article's default); "mean_top_n": mean of the min(n, B) largest;
    "mean": ``sum_b u_b / B``; "sum": ``sum_b u_b`` (grows with crowdedness). An image with no box has no aggregate:
    pass its policy score as `empty` (see `empty_image_scores`), otherwise a ValueError is raised.
    """
    u = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}; expected one of {', '.join(AGGREGATIONS)}")
    if u.size == 0:
        if empty is None:
            raise ValueError("image has no box: pass its empty-image policy score as `empty`")
        return float(empty)
    if method == "max":
        return float(u.max())
    if method == "mean":
        return float(u.mean())
    if method == "sum":
        return float(u.sum())
    if n < 1:
        raise ValueError(f"mean_top_n needs n >= 1, got {n}")
    top = np.sort(u)[::-1][:n]
    return float(top.mean())


def aggregate_csr(box_scores: np.ndarray, box_offsets: np.ndarray, method: str = "max", n: int = 3,
                  empty_scores: np.ndarray | float | None = None) -> np.ndarray:
    """`aggregate` for every image of a CSR pool at once: image i owns ``box_scores[offsets[i]:offsets[i+1]]``.

    Vectorised (no Python loop per image). Empty images take `empty_scores` (an (N,) array or a scalar); it is
    required as soon as one image is empty.
    """
    u = np.asarray(box_scores, dtype=np.float64).reshape(-1)
    offsets = np.asarray(box_offsets, dtype=np.int64)
    if method not in AGGREGATIONS:
        raise ValueError(f"unknown aggregation {method!r}; expected one of {', '.join(AGGREGATIONS)}")
    n_images = offsets.shape[0] - 1
    counts = np.diff(offsets)
    if counts.size and counts.min() < 0 or offsets[-1] != u.shape[0]:
        raise ValueError("box_offsets must be non-decreasing and end at len(box_scores)")
    has_box = counts > 0
    out = np.empty(n_images, dtype=np.float64)
    if (~has_box).any():
        if empty_scores is None:
            raise ValueError("some images have no box: pass their empty-image policy scores as `empty_scores`")
        out[~has_box] = np.broadcast_to(np.asarray(empty_scores, dtype=np.float64), (n_images,))[~has_box]
    if not has_box.any():
        return out
    owner = np.repeat(np.arange(n_images), counts)
    if method == "max":
        # reduceat over the starts of non-empty images only: an empty image between two others has no rows, so
        # each segment still ends where the next non-empty one starts.
        out[has_box] = np.maximum.reduceat(u, offsets[:-1][has_box])
    elif method in ("mean", "sum"):
        total = np.bincount(owner, weights=u, minlength=n_images)
        out[has_box] = total[has_box] / (counts[has_box] if method == "mean" else 1)
    else:
        if n < 1:
            raise ValueError(f"mean_top_n needs n >= 1, got {n}")
        order = np.lexsort((-u, owner))  # by image, most uncertain first
        rank = np.arange(u.shape[0]) - offsets[owner[order]]
        keep = order[rank < n]
        total = np.bincount(owner[keep], weights=u[keep], minlength=n_images)
        out[has_box] = total[has_box] / np.minimum(counts[has_box], n)
    return out


def image_uncertainty(pool, measure: str = "least_confidence", aggregation: str = "max", top_n: int = 3,
                      empty_policy: str = "near_miss", empty_value: float = 1.0) -> np.ndarray:
    """(N,) per-image uncertainty of a `ScoredPool`: `box_uncertainty` of every box, `aggregate_csr` per image,
    `empty_image_scores` for images with no kept box (from `pool.max_candidate_score`)."""
    per_box = box_uncertainty(pool.class_scores, measure) if pool.class_scores.shape[0] else np.zeros(0)
    empty = empty_image_scores(pool.max_candidate_score, measure, empty_policy, empty_value)
    return aggregate_csr(per_box, pool.box_offsets, aggregation, top_n, empty)
