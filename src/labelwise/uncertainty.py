"""Per-box and per-image uncertainty of a detector's class scores. Pure NumPy; higher = more informative.

YOLO (v8, 11, 26) scores every class with an independent sigmoid, so a box's row ``p`` does not sum to 1 and its top
score ``s = max_c p_c`` is also the model's probability that the box holds an object at all. The sigmoid measures
keep that: they never normalise a row.

- `detection_entropy`: is there an object? The binary entropy of the top score, in bits (0.5 is the least certain).
- `class_confusion`: which object? Confusion among the plausible classes, weighted by the top score.
- `detection_and_confusion`: the sum of the two (the default).
- `article_least_confidence`: the article's own baseline, ``1 - min`` top score over boxes kept at 0.25.

The classic measures on a distribution (least confidence, margin, entropy; Settles 2009, "Active Learning Literature
Survey") are kept for detectors whose rows really are softmax distributions, as `softmax_least_confidence`,
`softmax_margin` and `softmax_entropy`. Applied to sigmoid rows they rescale a faint clutter box
``[.051, .040, .045, .030]`` into a near-uniform distribution and call it maximally uncertain.

Which boxes count: a box counts towards an image's uncertainty when its top score is at least `box_threshold`, a
setting of its own (``strategy.box_threshold``), apart from the detector's NMS candidate threshold (``score.conf``):
scoring keeps faint candidates so that the threshold here can change without re-scoring. Per-image scores come from
the counted boxes with `aggregate` / `aggregate_csr`; an image with no counted box gets its score from an explicit
policy (`empty_image_scores`).
"""

from __future__ import annotations

import numpy as np

from labelwise.detections import csr_offsets

SIGMOID_MEASURES = ("detection_and_confusion", "detection_entropy", "class_confusion", "article_least_confidence")
SOFTMAX_MEASURES = ("softmax_least_confidence", "softmax_margin", "softmax_entropy")
MEASURES = SIGMOID_MEASURES + SOFTMAX_MEASURES
AGGREGATIONS = ("sum", "max", "mean_top_n", "mean")
EMPTY_POLICIES = ("near_miss", "fixed")

#: The article's confidence threshold: its least confidence looks only at boxes predicted at 0.25 or above.
ARTICLE_CONF = 0.25
#: Default `box_threshold`: boxes whose top score is below it are clutter as far as uncertainty goes.
DEFAULT_BOX_THRESHOLD = 0.1
#: Default `plausible` share for `class_confusion`: a class takes part when it scores at least this.
DEFAULT_PLAUSIBLE = 0.1

_LN2 = float(np.log(2.0))


def _scores_2d(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"class scores must be a 2-D (n_boxes, n_classes) array, got shape {p.shape}")
    if p.shape[1] == 0:
        raise ValueError("class scores need at least one class column")
    return p


def top_score(p: np.ndarray) -> np.ndarray:
    """``s_b = max_c p_bc``: a sigmoid detector's probability that box b is an object of its best class."""
    return np.clip(_scores_2d(p), 0.0, 1.0).max(axis=1)


def bernoulli_entropy_bits(s: np.ndarray) -> np.ndarray:
    """``H_2(s) = -s log2 s - (1 - s) log2 (1 - s)`` (0 log 0 = 0), in bits: 0 at s in {0, 1}, 1 at s = 0.5."""
    s = np.clip(np.asarray(s, dtype=np.float64), 0.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(np.where(s > 0, s * np.log(np.where(s > 0, s, 1.0)), 0.0)
              + np.where(s < 1, (1 - s) * np.log(np.where(s < 1, 1 - s, 1.0)), 0.0))
    return h / _LN2


def detection_entropy(p: np.ndarray) -> np.ndarray:
    """Detection uncertainty per box: the binary entropy of its top score, ``H_2(max_c p_c)``, in bits, in [0, 1].

    With independent sigmoids the top score is the probability that the box is an object at all, so the box the
    model is least sure exists (top score 0.5) scores 1, and both a confident box and faint clutter score low.
    Per-detection entropy aggregated over an image: Roy, Unmesh & Namboodiri 2018, "Deep Active Learning for Object
    Detection" (BMVC); Haussmann et al. 2020, "Scalable Active Learning for Object Detection" (IEEE IV).
    """
    return bernoulli_entropy_bits(top_score(p))


def class_confusion(p: np.ndarray, plausible: float = DEFAULT_PLAUSIBLE) -> np.ndarray:
    """Class confusion per box among its plausible classes, weighted by the probability that it is an object:

        P_b = {c : p_bc >= plausible},   q_c = p_bc / sum_{c' in P_b} p_bc'   (c in P_b),
        confusion_b = s_b * (1 - (q_(1) - q_(2))),   s_b = max_c p_bc,

    q_(1) >= q_(2) the two largest q (q_(2) = 0 with fewer than two plausible classes, so a box only one class
    explains scores 0). The margin term is 1-vs-2 margin sampling (Scheffer et al. 2001; for detection, Brust,
    Käding & Denzler 2019, "Active Learning for Deep Object Detection", VISAPP), taken over the classes the model
    finds plausible instead of a renormalised row of all classes, and the factor s_b keeps a box that is probably
    not an object from scoring high on a confusion between two near-zero classes. In [0, 1].
    """
    p = np.clip(_scores_2d(p), 0.0, 1.0)
    if p.shape[1] < 2:
        return np.zeros(p.shape[0])
    top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
    first, second = top2[:, 1], top2[:, 0]
    plaus = np.where(p >= plausible, p, 0.0).sum(axis=1)
    both = (second >= plausible) & (plaus > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin_q = np.where(both, (first - second) / np.where(plaus > 0, plaus, 1.0), 1.0)
    return first * (1.0 - margin_q)


def detection_and_confusion(p: np.ndarray, plausible: float = DEFAULT_PLAUSIBLE) -> np.ndarray:
    """``detection_entropy(p) + class_confusion(p)``: unsure whether it is an object, plus unsure which. In [0, 2]."""
    return detection_entropy(p) + class_confusion(p, plausible)


def top_score_least_confidence(p: np.ndarray) -> np.ndarray:
    """``1 - max_c p_c`` per box: the article's per-box term (its image score is the max over boxes at >= 0.25)."""
    return 1.0 - top_score(p)


def normalise_rows(p: np.ndarray) -> np.ndarray:
    """Rows of `p` rescaled to sum to 1: ``q_c = p_c / sum_c' p_c'`` (float64), for the softmax measures.

    Negative entries are clipped to 0. An all-zero row becomes uniform, ``q_c = 1/C``.
    """
    p = np.clip(_scores_2d(p), 0.0, None)
    total = p.sum(axis=1, keepdims=True)
    uniform = np.full_like(p, 1.0 / p.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, p / np.where(total > 0, total, 1.0), uniform)


def softmax_least_confidence(p: np.ndarray) -> np.ndarray:
    """Least confidence per box on a class distribution: ``1 - max_c q_c``, q the row normalised to sum to 1.

    Settles 2009. For softmax detectors only (see module docstring). Range [0, 1 - 1/C].
    """
    return 1.0 - normalise_rows(p).max(axis=1)


def softmax_margin(p: np.ndarray) -> np.ndarray:
    """Margin uncertainty per box on a class distribution: ``1 - (q_top1 - q_top2)``, q normalised to sum to 1.

    Scheffer et al. 2001. For softmax detectors only. With one class, ``q_top2 = 0``. Range [0, 1].
    """
    q = normalise_rows(p)
    if q.shape[1] == 1:
        return 1.0 - q[:, 0]
    top2 = np.partition(q, q.shape[1] - 2, axis=1)[:, -2:]
    return 1.0 - (top2[:, 1] - top2[:, 0])


def softmax_entropy(p: np.ndarray) -> np.ndarray:
    """Shannon entropy per box in nats on a class distribution: ``-sum_c q_c ln q_c``, q normalised to sum to 1.

    Shannon 1948; Settles 2009. For softmax detectors only. Range [0, ln C].
    """
    q = normalise_rows(p)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0)
    return -terms.sum(axis=1)


_PER_BOX = {
    "detection_and_confusion": detection_and_confusion,
    "detection_entropy": detection_entropy,
    "class_confusion": class_confusion,
    "article_least_confidence": top_score_least_confidence,
    "softmax_least_confidence": softmax_least_confidence,
    "softmax_margin": softmax_margin,
    "softmax_entropy": softmax_entropy,
}


def box_uncertainty(class_scores: np.ndarray, measure: str = "detection_and_confusion") -> np.ndarray:
    """Per-box uncertainty of a (n_boxes, n_classes) score array under `measure` (one of MEASURES).

    Softmax measures on a single-class model read the one column as the two-way distribution ``[p, 1 - p]``
    (object vs background); normalising one column would make every box certain.
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; expected one of {', '.join(MEASURES)}")
    p = np.asarray(class_scores, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"class scores must be 2-D, got shape {p.shape}")
    if p.shape[0] == 0:
        return np.zeros(0)
    if measure in SOFTMAX_MEASURES and p.shape[1] == 1:
        s = np.clip(p, 0.0, 1.0)
        p = np.concatenate([s, 1.0 - s], axis=1)
    return _PER_BOX[measure](p)


def counted_boxes(class_scores: np.ndarray, box_threshold: float) -> np.ndarray:
    """(B,) bool: the boxes that count towards uncertainty, ``max_c p_c >= box_threshold``."""
    p = np.asarray(class_scores, dtype=np.float64)
    if p.shape[0] == 0:
        return np.zeros(0, dtype=bool)
    return p.max(axis=1) >= box_threshold


def near_miss_scores(max_candidate_score: np.ndarray, measure: str = "detection_and_confusion",
                     box_threshold: float = 0.0) -> np.ndarray:
    """Uncertainty of images with no counted box, from how close the model came to seeing something.

    s = the highest score of any candidate in the image (kept or not). Sigmoid measures score it as a one-class box
    of top score s, so detection entropy ``H_2(s)`` (class confusion needs two classes: 0), and 0 when
    ``s < box_threshold``: a candidate too faint to count in an image with boxes does not count in an empty one
    either. The article's least confidence has no near miss: 0. Softmax measures read ``[s, 1 - s]`` (something vs
    nothing) under the same measure. A model that saw nothing (s = 0) is certain the image is empty (score 0).
    """
    s = np.clip(np.asarray(max_candidate_score, dtype=np.float64).reshape(-1), 0.0, 1.0)
    if measure in SOFTMAX_MEASURES:
        return box_uncertainty(np.stack([s, 1.0 - s], axis=1), measure)
    if measure in ("detection_entropy", "detection_and_confusion"):
        return np.where(s >= box_threshold, bernoulli_entropy_bits(s), 0.0)
    if measure in ("class_confusion", "article_least_confidence"):
        return np.zeros(s.shape[0])
    raise ValueError(f"unknown uncertainty measure {measure!r}; expected one of {', '.join(MEASURES)}")


def empty_image_scores(max_candidate_score: np.ndarray, measure: str = "detection_and_confusion",
                       policy: str = "near_miss", value: float = 1.0, box_threshold: float = 0.0) -> np.ndarray:
    """Scores for images with no counted box under an explicit policy (never an implicit 0 or 1).

    "near_miss" (default): `near_miss_scores` of the highest candidate score. "fixed": the constant `value` for every
    empty image (the article uses 1.0, which floods a batch with blank frames; kept for its baseline).
    """
    n = np.asarray(max_candidate_score).reshape(-1).shape[0]
    if policy == "near_miss":
        return near_miss_scores(max_candidate_score, measure, box_threshold)
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


#: Boxes scored at a time by `image_uncertainty` and `evidence_share`: the per-box measures make several float64
#: copies of the score rows, which for 5,000,000 boxes x 7 classes would be 280 MB each (issue 10).
_BOX_CHUNK = 262_144


def _counted_chunked(scores: np.ndarray, box_threshold: float) -> np.ndarray:
    """`counted_boxes`, a chunk of rows at a time."""
    keep = np.empty(scores.shape[0], dtype=bool)
    for start in range(0, scores.shape[0], _BOX_CHUNK):
        keep[start:start + _BOX_CHUNK] = counted_boxes(scores[start:start + _BOX_CHUNK], box_threshold)
    return keep


def image_uncertainty(pool, measure: str = "detection_and_confusion", aggregation: str = "sum", top_n: int = 3,
                      empty_policy: str = "near_miss", empty_value: float = 1.0,
                      box_threshold: float = DEFAULT_BOX_THRESHOLD) -> np.ndarray:
    """(N,) per-image uncertainty of a `ScoredPool`.

    `box_uncertainty` of every box whose top score is at least `box_threshold` (`counted_boxes`), `aggregate_csr`
    per image, `empty_image_scores` for images with no counted box. An image's best candidate is the larger of its
    `max_candidate_score` and its best kept box, so a kept box below the threshold still informs the near miss.

    "article_least_confidence" is the article's measure exactly: ``1 - min_b s_b`` over boxes with ``s_b >= 0.25``,
    i.e. per-box ``1 - s_b``, threshold `ARTICLE_CONF` and max aggregation, whatever `box_threshold` and
    `aggregation` say; only its empty-image policy is configurable.
    """
    if measure == "article_least_confidence":
        box_threshold, aggregation = ARTICLE_CONF, "max"
    offsets = np.asarray(pool.box_offsets, dtype=np.int64)
    scores = np.asarray(pool.class_scores)
    keep = _counted_chunked(scores, box_threshold)
    owner = pool.box_image_index
    best = np.asarray(pool.max_candidate_score, dtype=np.float64).reshape(-1).copy()
    if scores.shape[0]:
        np.maximum.at(best, owner, scores.max(axis=1))
    kept_offsets = csr_offsets(np.bincount(owner[keep], minlength=len(offsets) - 1))
    kept = np.flatnonzero(keep)
    per_box = np.empty(kept.size, dtype=np.float64)
    for start in range(0, kept.size, _BOX_CHUNK):  # per-box measures are row by row: chunks change nothing
        per_box[start:start + _BOX_CHUNK] = box_uncertainty(scores[kept[start:start + _BOX_CHUNK]], measure)
    empty = empty_image_scores(best, measure, empty_policy, empty_value, box_threshold)
    return aggregate_csr(per_box, kept_offsets, aggregation, top_n, empty)


def evidence_share(pool, box_threshold: float = DEFAULT_BOX_THRESHOLD) -> float:
    """Share of the pool's images with at least one box at or above `box_threshold`: how much the model sees.

    Near 0 for a young model; the selection falls back to diversity below a minimum share, because uncertainty
    that is 0 (or the near-miss score) almost everywhere ranks the pool by noise.
    """
    n = len(pool.box_offsets) - 1
    if n == 0:
        return 0.0
    scores = np.asarray(pool.class_scores)
    if scores.shape[0] == 0:
        return 0.0
    return float(np.unique(pool.box_image_index[_counted_chunked(scores, box_threshold)]).size / n)
