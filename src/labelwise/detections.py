"""What one forward pass of a detector says about images, as plain NumPy arrays.

`ImageDetections` is one image's result; `ScoredPool` is many images packed in a CSR layout (all boxes of all
images in one array, `box_offsets[i]:box_offsets[i + 1]` being image i's rows) so that the pure core can score an
80,000-image pool with vectorised NumPy instead of a Python loop per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def csr_offsets(counts: np.ndarray) -> np.ndarray:
    """(n + 1,) offsets of a CSR layout from (n,) per-row counts: offsets[0] = 0, offsets[i + 1] = sum(counts[:i + 1])."""
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return offsets


@dataclass(frozen=True)
class ImageDetections:
    """Everything the selection needs from one image, from ONE forward pass.

    boxes: (n, 4) float32, x1 y1 x2 y2 in the original image's pixels.
    class_scores: (n, n_classes) float32, the FULL per-class score vector of every kept box (YOLO: independent
        sigmoids, so rows do not sum to 1).
    box_features: (n, d_box) float16, a feature vector per box pooled from the maps that feed the detection head.
    embedding: (d,) float32, the global-average-pooled head inputs: the image embedding.
    max_candidate_score: the highest class score of ANY candidate before the confidence threshold. It says how
        close the model came to seeing something in an image where it kept no box (the empty-image policy).
    width, height: the original image size in pixels.
    """

    boxes: np.ndarray
    class_scores: np.ndarray
    box_features: np.ndarray
    embedding: np.ndarray
    max_candidate_score: float
    width: int
    height: int

    @property
    def n_boxes(self) -> int:
        return int(self.boxes.shape[0])

    def yolo_boxes(self) -> list[tuple[int, float, float, float, float, float]]:
        """Kept boxes as (class_id, cx, cy, w, h, confidence) normalised to [0, 1] (YOLO txt convention)."""
        out = []
        for box, scores in zip(self.boxes, self.class_scores):
            x1, y1, x2, y2 = (float(v) for v in box)
            cls = int(np.argmax(scores))
            out.append((
                cls,
                (x1 + x2) / 2 / self.width,
                (y1 + y2) / 2 / self.height,
                (x2 - x1) / self.width,
                (y2 - y1) / self.height,
                float(scores[cls]),
            ))
        return out


@dataclass(frozen=True)
class ScoredPool:
    """Detections of N images packed for vectorised scoring.

    image_ids: (N,) int64, the store's ids of the images (row i of every per-image array is image_ids[i]).
    embeddings: (N, d) float32 image embeddings.
    box_offsets: (N + 1,) int64; image i owns rows box_offsets[i]:box_offsets[i + 1] of the per-box arrays.
    class_scores: (B, n_classes) float32 full class-score vectors of all B boxes.
    boxes: (B, 4) float32 boxes, x1 y1 x2 y2 normalised by the image size (so images of different sizes compare).
    max_candidate_score: (N,) float32, see ImageDetections.
    hashes: (N, 2) uint64 perceptual hashes of the image files (column 0 pHash, column 1 dHash; see
        `labelwise.neardup`), or None where the store has none. Computed at ingest, so they exist before any model.
    """

    image_ids: np.ndarray
    embeddings: np.ndarray
    box_offsets: np.ndarray
    class_scores: np.ndarray
    boxes: np.ndarray
    max_candidate_score: np.ndarray
    hashes: np.ndarray | None = None

    def __post_init__(self) -> None:
        n = len(self.image_ids)
        if self.box_offsets.shape != (n + 1,):
            raise ValueError(f"box_offsets must have shape ({n + 1},), got {self.box_offsets.shape}")
        if self.embeddings.shape[0] != n or self.max_candidate_score.shape != (n,):
            raise ValueError("embeddings and max_candidate_score need one row per image")
        if self.class_scores.shape[0] != self.box_offsets[-1] or self.boxes.shape[0] != self.box_offsets[-1]:
            raise ValueError("class_scores and boxes need box_offsets[-1] rows")

    def __len__(self) -> int:
        return len(self.image_ids)

    @property
    def n_classes(self) -> int:
        return int(self.class_scores.shape[1])

    @property
    def boxes_per_image(self) -> np.ndarray:
        return np.diff(self.box_offsets)

    @property
    def box_image_index(self) -> np.ndarray:
        """(B,) the pool row that owns each box."""
        return np.repeat(np.arange(len(self.image_ids)), self.boxes_per_image)

    def subset(self, rows: np.ndarray) -> "ScoredPool":
        """The pool restricted to `rows` (pool positions), in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        counts = self.boxes_per_image[rows]
        offsets = csr_offsets(counts)
        box_rows = np.concatenate(
            [np.arange(self.box_offsets[r], self.box_offsets[r + 1]) for r in rows]
        ) if len(rows) else np.zeros(0, dtype=np.int64)
        box_rows = box_rows.astype(np.int64)
        return ScoredPool(
            image_ids=self.image_ids[rows],
            embeddings=self.embeddings[rows],
            box_offsets=offsets,
            class_scores=self.class_scores[box_rows],
            boxes=self.boxes[box_rows],
            max_candidate_score=self.max_candidate_score[rows],
            hashes=None if self.hashes is None else self.hashes[rows],
        )
