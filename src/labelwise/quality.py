"""Label quality of a returned batch: which images most likely hold an annotation error, and of which kind. Pure
NumPy in and out; cleanlab (imported when called) does the scoring.

The method is ObjectLab (Tkachenko, Thyagarajan and Mueller 2023, "ObjectLab: Automated Diagnosis of Mislabeled
Images in Object Detection Data", ICML workshop on data-centric ML; `cleanlab.object_detection`). It compares the
given label boxes of an image with a trained model's predicted boxes. With label box ``a`` and predicted box ``b``:

    similarity  S(a, b) = alpha * IoU(a, b) + (1 - alpha) * exp(-0.1 * ||centre(a) - centre(b)||)   (pixels, alpha=.9)

and three per-box scores in [0, 1], low meaning "probably wrong":

- **missing box** (cleanlab: overlooked), one per confident prediction ``b`` of class k (``p_b >= 0.95``) that
  touches no label box: ``max_a S(a, b)`` over the label boxes of class k, or ``S_min * (1 - p_b)`` when the image
  has none (``S_min``: the smallest non-zero similarity in the data);
- **wrong class** (swap), one per label box ``a`` of class k: ``1 - max_b S(a, b)`` over the confident predictions
  (``p_b > 0.95``) of another class, floored at ``S_min``; 1 when there is none;
- **badly placed box** (badloc), one per label box ``a`` of class k: ``max_b S(a, b)`` over the predictions of class
  k with ``p_b > 0.5`` that overlap it; 1 when there is none.

Each kind is pooled over the image's boxes with a soft minimum, ``s_t = sum_i s_i softmax(-s / 0.1)_i`` (1 when the
image has no such box), and the image's label quality score is their weighted geometric mean,

    q = exp( sum_t w_t * log(s_t) ),  w = 1/3 each;

q near 0: the label is most likely wrong. `find_label_issues` flags an image when any of its boxes scores at most
``0.8 * 0.25 * AP_k`` for its class k, AP_k the class's AP (IoU .5:.95) of the predictions against the labels.

Predictions come from a YOLO head whose class scores are independent sigmoids: a box's top class score is both its
class probability and its probability of being an object at all (there is no separate objectness). ObjectLab's
``pred_prob`` is exactly that top score, and it is passed as it is: renormalising the row to sum to 1 would turn a
faint ``[.06, .05]`` clutter box into a confident .55 one.

Also here: the naive baseline the benchmark compares against (`disagreements`: prediction and label disagree at
IoU 0.5).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from labelwise.boxes import match_boxes

#: The kinds of annotation error, as labelwise names them, and the cleanlab subscore each comes from.
ISSUE_TYPES: tuple[str, ...] = ("missing_box", "wrong_class", "badly_placed")
CLEANLAB_SUBTYPES: dict[str, str] = {"missing_box": "overlooked", "wrong_class": "swap", "badly_placed": "badloc"}
#: How people read them (status, report, CSV).
ISSUE_NAMES: dict[str, str] = {"missing_box": "missing box", "wrong_class": "wrong class",
                               "badly_placed": "badly placed box"}
#: The baseline's defaults: predictions kept at this confidence (the pre-annotations' threshold), matched at this IoU.
BASELINE_CONF = 0.25
BASELINE_IOU = 0.5


@dataclass(frozen=True)
class ImageLabels:
    """One image's given label: classes (L,) int and boxes (L, 4) x1 y1 x2 y2 in pixels."""

    classes: np.ndarray
    boxes: np.ndarray


@dataclass(frozen=True)
class ImagePredictions:
    """One image's predicted boxes (M, 4) x1 y1 x2 y2 in pixels and their full class-score rows (M, K)."""

    boxes: np.ndarray
    class_scores: np.ndarray


@dataclass(frozen=True)
class LabelQuality:
    """ObjectLab's verdict on N images (row i: image i of the input).

    score: (N,) label quality in [0, 1], low = most likely mislabeled. missing_box, wrong_class, badly_placed: (N,)
    the pooled subscore of each kind (1 where the image has nothing of that kind). flagged: (N,) cleanlab's
    `find_label_issues`. issue: (N,) the kind with the lowest subscore (what most likely went wrong). box: (N, 4)
    x1 y1 x2 y2 pixels of the box behind that kind (a predicted box for missing_box, the label box otherwise; NaN
    when none), box_class (N,) its class (-1 none), suggested_class (N,) for wrong_class the class of the confident
    prediction over that box (-1 otherwise).
    """

    score: np.ndarray
    missing_box: np.ndarray
    wrong_class: np.ndarray
    badly_placed: np.ndarray
    flagged: np.ndarray
    issue: np.ndarray
    box: np.ndarray
    box_class: np.ndarray
    suggested_class: np.ndarray

    def __len__(self) -> int:
        return len(self.score)

    def subscore(self, kind: str) -> np.ndarray:
        return {"missing_box": self.missing_box, "wrong_class": self.wrong_class,
                "badly_placed": self.badly_placed}[kind]

    def order(self) -> np.ndarray:
        """Image rows from the most to the least likely mislabeled (lowest score first; ties by row)."""
        return np.argsort(self.score, kind="stable")

    def suspects(self, threshold: float | None = None, top_k: int | None = None) -> np.ndarray:
        """Rows of the suspect images, worst first: those cleanlab flags (`threshold` None), or those whose score is
        at most `threshold` (cleanlab's `issues_from_scores`); at most `top_k` of them."""
        if threshold is None:
            chosen = self.flagged
        else:
            chosen = self.score <= threshold
        rows = np.asarray([r for r in self.order() if chosen[r]], dtype=np.int64)
        return rows if top_k is None else rows[:top_k]


def labels_from_yolo(boxes: Sequence[Sequence[float]], width: int, height: int) -> ImageLabels:
    """A YOLO label (class, cx, cy, w, h normalised) as pixel x1 y1 x2 y2 boxes of a width x height image."""
    arr = np.asarray([list(b)[:5] for b in boxes], dtype=np.float64).reshape(-1, 5)
    cx, cy, w, h = arr[:, 1] * width, arr[:, 2] * height, arr[:, 3] * width, arr[:, 4] * height
    xyxy = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return ImageLabels(arr[:, 0].astype(np.int64), xyxy)


def xyxy_to_yolo(box: np.ndarray, width: int, height: int) -> tuple[float, float, float, float]:
    """A pixel x1 y1 x2 y2 box as normalised cx cy w h."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return (x1 + x2) / 2 / width, (y1 + y2) / 2 / height, (x2 - x1) / width, (y2 - y1) / height


def cleanlab_label(label: ImageLabels) -> dict[str, np.ndarray]:
    """cleanlab's label format: {'bboxes': (L, 4) float x1 y1 x2 y2, 'labels': (L,) int}."""
    return {"bboxes": np.asarray(label.boxes, dtype=np.float64).reshape(-1, 4),
            "labels": np.asarray(label.classes, dtype=np.int64).reshape(-1)}


def cleanlab_prediction(prediction: ImagePredictions, n_classes: int) -> list[np.ndarray]:
    """cleanlab's prediction format: for each class k, an (M_k, 5) array [x1, y1, x2, y2, p] of the boxes whose top
    class is k, p the top class score as it is (a sigmoid detector's objectness: never renormalised)."""
    boxes = np.asarray(prediction.boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(prediction.class_scores, dtype=np.float64).reshape(len(boxes), -1) if len(boxes) else \
        np.zeros((0, n_classes))
    if scores.shape[1] != n_classes:
        raise ValueError(f"predictions have {scores.shape[1]} class scores per box, the labels {n_classes} classes")
    top = scores.argmax(axis=1) if len(boxes) else np.zeros(0, dtype=np.int64)
    conf = np.clip(scores.max(axis=1), 0.0, 1.0) if len(boxes) else np.zeros(0)
    rows = np.concatenate([boxes, conf[:, None]], axis=1)
    return [rows[top == k] for k in range(n_classes)]


def _check(labels: Sequence[ImageLabels], n_classes: int) -> None:
    for i, label in enumerate(labels):
        classes = np.asarray(label.classes).reshape(-1)
        if len(classes) and (classes.min() < 0 or classes.max() >= n_classes):
            raise ValueError(f"image {i}: label class {int(classes.max())} is not one of the {n_classes} classes")


def label_quality(labels: Sequence[ImageLabels], predictions: Sequence[ImagePredictions],
                  n_classes: int) -> LabelQuality:
    """ObjectLab's label quality of each image (see the module docstring for the formulas), its three subscores,
    cleanlab's flag, and the kind and box of the most likely error.

    Wraps `cleanlab.object_detection.rank.get_label_quality_scores` (the score), `compute_overlooked_box_scores`,
    `compute_swap_box_scores`, `compute_badloc_box_scores` and `pool_box_scores_per_image` (the subscores and the
    boxes) and `cleanlab.object_detection.filter.find_label_issues` (the flag). cleanlab's own prints are silenced.
    """
    from cleanlab.object_detection import filter as od_filter
    from cleanlab.object_detection import rank as od_rank

    if len(labels) != len(predictions):
        raise ValueError(f"{len(labels)} labels but {len(predictions)} predictions")
    if n_classes < 1:
        raise ValueError("n_classes must be at least 1")
    _check(labels, n_classes)
    n = len(labels)
    if n == 0:
        empty = np.zeros(0)
        return LabelQuality(empty, empty, empty, empty, np.zeros(0, dtype=bool), np.zeros(0, dtype=object),
                            np.zeros((0, 4)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    lab = [cleanlab_label(label) for label in labels]
    pred = [cleanlab_prediction(p, n_classes) for p in predictions]
    with contextlib.redirect_stdout(io.StringIO()):
        score = np.asarray(od_rank.get_label_quality_scores(lab, pred, verbose=False), dtype=np.float64)
        overlooked = od_rank.compute_overlooked_box_scores(labels=lab, predictions=pred)
        swap = od_rank.compute_swap_box_scores(labels=lab, predictions=pred)
        badloc = od_rank.compute_badloc_box_scores(labels=lab, predictions=pred)
        pooled = {kind: np.asarray(od_rank.pool_box_scores_per_image(per_box), dtype=np.float64)
                  for kind, per_box in (("missing_box", overlooked), ("wrong_class", swap),
                                        ("badly_placed", badloc))}
        flagged = np.asarray(od_filter.find_label_issues(lab, pred), dtype=bool)

    issue = np.empty(n, dtype=object)
    box = np.full((n, 4), np.nan)
    box_class = np.full(n, -1, dtype=np.int64)
    suggested = np.full(n, -1, dtype=np.int64)
    stacked = np.stack([pooled[k] for k in ISSUE_TYPES], axis=1)
    for i in range(n):
        kind = ISSUE_TYPES[int(np.argmin(stacked[i]))]
        issue[i] = kind
        per_box = {"missing_box": overlooked, "wrong_class": swap, "badly_placed": badloc}[kind][i]
        per_box = np.where(np.isnan(per_box), np.inf, per_box)
        if not len(per_box) or not np.isfinite(per_box).any():
            continue
        j = int(np.argmin(per_box))
        if kind == "missing_box":  # scores of predicted boxes, in cleanlab's order (class by class)
            rows = np.concatenate(pred[i], axis=0)
            box[i], box_class[i] = rows[j, :4], np.concatenate(
                [np.full(len(c), k) for k, c in enumerate(pred[i])])[j]
        else:
            box[i], box_class[i] = lab[i]["bboxes"][j], lab[i]["labels"][j]
            if kind == "wrong_class":
                suggested[i] = _swap_suggestion(lab[i]["bboxes"][j], int(box_class[i]), pred[i])
    return LabelQuality(score, pooled["missing_box"], pooled["wrong_class"], pooled["badly_placed"], flagged,
                        issue, box, box_class, suggested)


def _swap_suggestion(label_box: np.ndarray, label_class: int, prediction: list[np.ndarray]) -> int:
    """The class of the confident prediction of another class (p > cleanlab's high-probability threshold) that
    overlaps `label_box` most; -1 when none does."""
    from cleanlab.internal.constants import HIGH_PROBABILITY_THRESHOLD

    from labelwise.boxes import iou_matrix

    best, best_iou = -1, 0.0
    for k, rows in enumerate(prediction):
        if k == label_class or not len(rows):
            continue
        confident = rows[rows[:, 4] > HIGH_PROBABILITY_THRESHOLD]
        if not len(confident):
            continue
        iou = float(iou_matrix(label_box[None, :], confident[:, :4]).max())
        if iou > best_iou:
            best, best_iou = k, iou
    return best


def disagreements(labels: Sequence[ImageLabels], predictions: Sequence[ImagePredictions], *,
                  conf: float = BASELINE_CONF, iou: float = BASELINE_IOU) -> np.ndarray:
    """The naive baseline: per image, how many boxes the label and the prediction disagree on. Predictions with top
    score >= `conf` are matched one-to-one to label boxes at IoU >= `iou` (class-agnostic, `boxes.match_boxes`);
    every unmatched label box, unmatched predicted box and matched pair of different classes counts once. (N,)
    int; an image is flagged when its count is above 0."""
    counts = np.zeros(len(labels), dtype=np.int64)
    for i, (label, pred) in enumerate(zip(labels, predictions)):
        lab_boxes = np.asarray(label.boxes, dtype=np.float64).reshape(-1, 4)
        lab_classes = np.asarray(label.classes, dtype=np.int64).reshape(-1)
        scores = np.asarray(pred.class_scores, dtype=np.float64).reshape(len(pred.boxes), -1) if len(
            pred.boxes) else np.zeros((0, 1))
        keep = scores.max(axis=1) >= conf
        p_boxes = np.asarray(pred.boxes, dtype=np.float64).reshape(-1, 4)[keep]
        p_classes = scores[keep].argmax(axis=1) if keep.any() else np.zeros(0, dtype=np.int64)
        rows, cols, _ = match_boxes(lab_boxes, p_boxes, iou)
        counts[i] = (len(lab_boxes) - len(rows)) + (len(p_boxes) - len(cols)) + int(
            np.sum(lab_classes[rows] != p_classes[cols]))
    return counts
