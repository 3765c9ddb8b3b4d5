"""Test-time-augmentation consistency: how much a detector's boxes move and its class scores change between an
image and its horizontal flip. In the spirit of CALD (Yu et al. 2022, "Consistency-based Active Learning for Object
Detection") and the localisation stability of Kao et al. 2018. Pure NumPy/SciPy.
"""

from __future__ import annotations

import numpy as np

from labelwise.boxes import match_boxes
from labelwise.detections import csr_offsets
from labelwise.uncertainty import aggregate_csr, normalise_rows


def jensen_shannon(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Row-wise Jensen-Shannon divergence in [0, 1] (base-2): ``JS = (KL(p||m) + KL(q||m)) / (2 ln 2)``,
    ``m = (p + q) / 2``, on row-normalised class-score vectors (see `uncertainty.normalise_rows`). Lin 1991."""
    p, q = normalise_rows(p), normalise_rows(q)
    m = 0.5 * (p + q)

    def kl(a: np.ndarray) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(a > 0, a * np.log(np.where(a > 0, a, 1.0) / np.where(m > 0, m, 1.0)), 0.0).sum(axis=1)

    return np.clip((kl(p) + kl(q)) / (2.0 * np.log(2.0)), 0.0, 1.0)


def box_inconsistency(boxes: np.ndarray, scores: np.ndarray, flipped_boxes: np.ndarray, flipped_scores: np.ndarray,
                      iou_threshold: float = 0.5) -> np.ndarray:
    """Per-box inconsistency of one image between its original pass and its flipped pass (flipped boxes already
    mapped back to the original orientation).

    Boxes are matched one-to-one (Hungarian, IoU >= threshold). A matched pair scores
    ``0.5 * (1 - IoU) + 0.5 * JS(p, p')``; every unmatched box, on either side, scores 1 (fully inconsistent: the
    object appeared or vanished under a flip). Returns one value per matched pair plus one per unmatched box.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    flipped_boxes = np.asarray(flipped_boxes, dtype=np.float64).reshape(-1, 4)
    ra, rb, ious = match_boxes(boxes, flipped_boxes, iou_threshold)
    matched = np.zeros(0)
    if ra.size:
        matched = 0.5 * (1.0 - ious) + 0.5 * jensen_shannon(np.asarray(scores)[ra], np.asarray(flipped_scores)[rb])
    n_unmatched = boxes.shape[0] + flipped_boxes.shape[0] - 2 * ra.size
    return np.concatenate([matched, np.ones(n_unmatched)])


def consistency_scores(pool, flipped, aggregation: str = "max", top_n: int = 3,
                       iou_threshold: float = 0.5) -> np.ndarray:
    """(N,) per-image inconsistency between `pool` and `flipped` (a `ScoredPool` of the flipped images, boxes mapped
    back), `box_inconsistency` aggregated with `uncertainty.aggregate_csr`.

    An image with no kept box in either pass gets 0: both passes agree it is empty (measured, not a default).
    """
    if not np.array_equal(pool.image_ids, flipped.image_ids):
        raise ValueError("the flipped pool must score the same images in the same order as the pool")
    n = len(pool)
    parts: list[np.ndarray] = []
    counts = np.zeros(n, dtype=np.int64)
    for i in range(n):
        a0, a1 = pool.box_offsets[i], pool.box_offsets[i + 1]
        b0, b1 = flipped.box_offsets[i], flipped.box_offsets[i + 1]
        if a0 == a1 and b0 == b1:
            continue
        v = box_inconsistency(pool.boxes[a0:a1], pool.class_scores[a0:a1],
                              flipped.boxes[b0:b1], flipped.class_scores[b0:b1], iou_threshold)
        parts.append(v)
        counts[i] = v.shape[0]
    offsets = csr_offsets(counts)
    flat = np.concatenate(parts) if parts else np.zeros(0)
    return aggregate_csr(flat, offsets, aggregation, top_n, empty_scores=0.0)
