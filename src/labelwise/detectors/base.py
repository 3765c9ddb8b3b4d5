"""The Detector protocol: what the loop needs from any object detector (train, score), nothing more."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from labelwise.detections import ImageDetections


class DetectorError(RuntimeError):
    """The detector could not do what was asked; the message says why and how to proceed."""


class ModelUnavailableError(DetectorError):
    """The model to start from is neither on this machine nor downloadable now; the message says how to proceed."""


@dataclass(frozen=True)
class TrainRequest:
    data_yaml: Path  # an Ultralytics-style dataset YAML written from the store
    start: str  # weights or model YAML to start from
    out_dir: Path  # everything the run writes goes here
    epochs: int
    imgsz: int
    batch: int
    device: str
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainResult:
    weights: Path
    map50: float
    map50_95: float
    per_class_ap50: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class ScoreFailure:
    """An image the detector could not read; the loop quarantines it."""

    reason: str


class Detector(Protocol):
    def train(self, request: TrainRequest) -> TrainResult: ...

    def score(self, weights: Path, images: Iterable[tuple[str, Path]], *, imgsz: int, conf: float, iou: float,
              batch: int, device: str, flip: bool = False,
              max_det: int = 100) -> Iterator[tuple[str, ImageDetections | ScoreFailure]]:
        """Yield (key, detections) for every (key, path), streaming in batches so memory does not grow with the
        pool. With flip=True the image is mirrored left-right and the boxes are mapped back to the original."""
        ...
