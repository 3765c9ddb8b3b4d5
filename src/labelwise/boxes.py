"""Box geometry shared by the committee, consistency and stopping rules: IoU and one-to-one matching.

Pure NumPy. Boxes are (n, 4) arrays of x1 y1 x2 y2 in any common unit.
"""

from __future__ import annotations

import numpy as np

# How far past an image edge a normalised coordinate may reach and still count as on the edge: float exports
# (CVAT, Label Studio, Roboflow) leave values like 1.0000001 or -1e-6. Within this slack a coordinate is clipped to
# [0, 1]; beyond it the box is refused. One value for every reader of boxes, as a fraction of the image side.
EDGE_TOLERANCE = 1e-3


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise intersection over union, IoU(A, B) = |A ∩ B| / |A ∪ B|, as an (len(a), len(b)) array.

    Degenerate boxes (zero area) have IoU 0 with everything.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(union > 0, inter / union, 0.0)
    return out


def match_boxes(a: np.ndarray, b: np.ndarray, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching of boxes `a` to boxes `b` among the pairs with IoU >= `iou_threshold` (`match_ious`).

    Returns (rows_a, rows_b, ious) of the matched pairs; every box appears in at most one pair. Unmatched boxes are
    those not listed.
    """
    return match_ious(iou_matrix(a, b), iou_threshold)


def match_ious(ious: np.ndarray, iou_threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One-to-one matching on an IoU matrix: the most pairs with IoU >= `iou_threshold`, and among those the
    largest total IoU (Hungarian algorithm). Returns (rows, cols, ious) of the matched pairs.

    Pairs below the threshold are removed BEFORE the assignment: maximising the total IoU over all pairs and then
    dropping those below the threshold can pair a box with the wrong partner and lose a valid pair (for IoU
    [[.515, .448], [.356, .257]] at .5, the total is largest for (0,1),(1,0), neither valid, so nothing matched).
    Each valid pair weighs M + IoU with M = min(n_a, n_b) + 1, so one more pair always outweighs any gain in IoU:
    no valid pair is ever left with both of its boxes unmatched.
    """
    from scipy.optimize import linear_sum_assignment  # scipy.optimize costs ~1 s to import: only when matching

    ious = np.asarray(ious, dtype=np.float64)
    valid = ious >= iou_threshold  # False for NaN
    if not valid.any():
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    weight = np.where(valid, min(ious.shape) + 1 + ious, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    keep = valid[rows, cols]
    return rows[keep].astype(np.int64), cols[keep].astype(np.int64), ious[rows, cols][keep]


def yolo_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) cx cy w h -> x1 y1 x2 y2, in the same unit."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    half = boxes[:, 2:4] / 2
    return np.concatenate([boxes[:, 0:2] - half, boxes[:, 0:2] + half], axis=1)
