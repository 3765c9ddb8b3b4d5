"""The label-quality core (labelwise.quality): cleanlab's ObjectLab fed with our boxes and sigmoid class scores."""

from __future__ import annotations

import numpy as np
import pytest

from labelwise.quality import (
    ISSUE_TYPES,
    ImageLabels,
    ImagePredictions,
    cleanlab_label,
    cleanlab_prediction,
    disagreements,
    label_quality,
    labels_from_yolo,
    xyxy_to_yolo,
)

K = 3


def _scene(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n boxes on a 320 x 320 image, apart from each other (one per cell of a 4 x 4 grid)."""
    cells = rng.choice(16, size=n, replace=False)
    x0, y0 = (cells % 4) * 80 + 10, (cells // 4) * 80 + 10
    wh = rng.uniform(30, 55, (n, 2))
    boxes = np.stack([x0, y0, x0 + wh[:, 0], y0 + wh[:, 1]], axis=1).astype(np.float64)
    return rng.integers(0, K, n), boxes


def _confident(classes: np.ndarray, boxes: np.ndarray, rng: np.random.Generator, p: float = 0.98) -> ImagePredictions:
    scores = np.full((len(boxes), K), 0.01)
    scores[np.arange(len(boxes)), classes] = p
    return ImagePredictions(boxes + rng.normal(0, 0.5, boxes.shape), scores)


def _dataset(n: int = 40, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels, preds = [], []
    for _ in range(n):
        classes, boxes = _scene(rng, int(rng.integers(2, 5)))
        labels.append(ImageLabels(classes, boxes))
        preds.append(_confident(classes, boxes, rng))
    return labels, preds


def _inject(labels):
    """Image 0 loses a box, image 1 has its first box's class swapped, image 2 its first box shifted by 30%."""
    labels = list(labels)
    dropped = labels[0].boxes[0].copy()
    labels[0] = ImageLabels(labels[0].classes[1:], labels[0].boxes[1:])
    swapped = labels[1].classes.copy()
    swapped[0] = (swapped[0] + 1) % K
    labels[1] = ImageLabels(swapped, labels[1].boxes)
    shifted = labels[2].boxes.copy()
    width = shifted[0, 2] - shifted[0, 0]
    shifted[0, [0, 2]] += 0.3 * width
    labels[2] = ImageLabels(labels[2].classes, shifted)
    return labels, dropped


def test_predictions_are_grouped_by_top_class_with_the_top_score_as_it_is():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], dtype=np.float32)
    scores = np.array([[0.06, 0.05, 0.01], [0.1, 0.2, 0.9], [0.3, 0.7, 0.2]], dtype=np.float32)
    per_class = cleanlab_prediction(ImagePredictions(boxes, scores), K)
    assert [len(c) for c in per_class] == [1, 1, 1] and all(c.shape[1] == 5 for c in per_class)
    # the sigmoid top score, never renormalised (.06 / (.06 + .05 + .01) would be .5)
    assert per_class[0][0, 4] == pytest.approx(0.06)
    assert per_class[2][0].tolist() == pytest.approx([5, 5, 20, 20, 0.9])
    empty = cleanlab_prediction(ImagePredictions(np.zeros((0, 4)), np.zeros((0, K))), K)
    assert [c.shape for c in empty] == [(0, 5)] * K
    with pytest.raises(ValueError, match="class scores"):
        cleanlab_prediction(ImagePredictions(boxes, scores[:, :2]), K)


def test_yolo_labels_become_pixel_corners_and_back():
    label = labels_from_yolo([(2, 0.5, 0.25, 0.2, 0.1)], 200, 100)
    assert label.classes.tolist() == [2] and label.boxes.tolist() == [[80.0, 20.0, 120.0, 30.0]]
    assert xyxy_to_yolo(label.boxes[0], 200, 100) == pytest.approx((0.5, 0.25, 0.2, 0.1))
    assert cleanlab_label(labels_from_yolo([], 10, 10))["bboxes"].shape == (0, 4)


def test_injected_errors_rank_first_with_their_kind_and_box():
    labels, preds = _dataset()
    dropped_class = int(labels[0].classes[0])
    labels, dropped = _inject(labels)
    q = label_quality(labels, preds, K)
    assert len(q) == 40
    assert set(q.order()[:3].tolist()) == {0, 1, 2}
    assert q.score[3:].min() > q.score[:3].max()
    assert list(q.issue[:3]) == ["missing_box", "wrong_class", "badly_placed"]
    # the missing box is the model's box over the dropped object; the others are the label boxes at fault
    assert np.abs(q.box[0] - dropped).max() < 3 and q.box_class[0] == dropped_class
    assert q.box[1].tolist() == labels[1].boxes[0].tolist() and q.box_class[1] == labels[1].classes[0]
    assert q.suggested_class[1] == (labels[1].classes[0] - 1) % K  # the class the confident prediction says
    assert q.box[2].tolist() == labels[2].boxes[0].tolist() and q.suggested_class[2] == -1
    # the clean images: no kind drags them down
    assert np.all(q.missing_box[3:] == 1.0) and np.all(q.wrong_class[3:] > 0.999)
    # cleanlab's flag catches the missing box and the swapped class (its threshold is strict for a shifted box)
    assert q.flagged[0] and q.flagged[1] and not q.flagged[3:].any()
    assert q.suspects().tolist()[:2] == [0, 1]
    assert q.suspects(threshold=float(q.score[2])).tolist() == [0, 1, 2]
    assert q.suspects(threshold=float(q.score[2]), top_k=1).tolist() == [0]


def test_the_score_is_the_weighted_geometric_mean_of_the_three_subscores():
    labels, preds = _dataset(12, seed=3)
    labels, _ = _inject(labels)
    q = label_quality(labels, preds, K)
    expected = np.exp(sum(np.log(1e-100 + q.subscore(kind)) / 3 for kind in ISSUE_TYPES))
    np.testing.assert_allclose(q.score, expected, rtol=1e-9)
    assert np.all((q.score >= 0) & (q.score <= 1))


def test_faint_predictions_are_not_evidence_of_a_misplaced_box():
    # a label box with only a faint overlapping prediction (top score .3 < cleanlab's .5): nothing to say
    label = ImageLabels(np.array([0]), np.array([[10.0, 10.0, 50.0, 50.0]]))
    faint = ImagePredictions(np.array([[25.0, 10.0, 65.0, 50.0]]), np.array([[0.3, 0.25, 0.2]]))
    sure = ImagePredictions(np.array([[25.0, 10.0, 65.0, 50.0]]), np.array([[0.9, 0.05, 0.02]]))
    q = label_quality([label, label], [faint, sure], K)
    assert q.badly_placed[0] == 1.0 and q.badly_placed[1] < 0.7 and q.score[1] < q.score[0]


def test_images_without_boxes():
    nothing = ImageLabels(np.zeros(0, dtype=int), np.zeros((0, 4)))
    no_pred = ImagePredictions(np.zeros((0, 4)), np.zeros((0, K)))
    rng = np.random.default_rng(1)
    classes, boxes = _scene(rng, 2)
    q = label_quality([nothing, nothing, ImageLabels(classes, boxes)],
                      [no_pred, _confident(classes, boxes, rng), no_pred], K)
    assert q.score[0] == pytest.approx(1.0) and q.issue[1] == "missing_box" and q.score[1] < 0.5
    assert q.score[2] == pytest.approx(1.0)  # labels the model does not see: nothing to contradict them
    assert len(label_quality([], [], K)) == 0


def test_a_label_class_out_of_range_is_refused():
    with pytest.raises(ValueError, match="not one of the 3 classes"):
        label_quality([ImageLabels(np.array([3]), np.array([[0.0, 0, 1, 1]]))],
                      [ImagePredictions(np.zeros((0, 4)), np.zeros((0, K)))], K)


def test_the_baseline_counts_disagreements_at_iou_half():
    labels, preds = _dataset(6, seed=5)
    labels, _ = _inject(labels)
    counts = disagreements(labels, preds)
    assert counts[0] == 1 and counts[1] == 1 and counts[3:].tolist() == [0, 0, 0]
    # a 30% shift leaves IoU (0.7 / 1.3) = .54 >= .5: the naive baseline does not see it
    assert counts[2] == 0
    # faint predictions (below the 0.25 pre-annotation threshold) are not counted
    faint = ImagePredictions(preds[3].boxes, preds[3].class_scores * 0.2)
    assert disagreements([labels[3]], [faint])[0] == len(labels[3].boxes)
