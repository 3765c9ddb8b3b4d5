"""The protocol every annotation backend speaks, and the values that cross it.

A backend moves one round's batch to where people draw boxes and brings their boxes back. It knows nothing about
rounds, strategies or the store: the workflow (`labelwise.loop`) hands it a `Batch` and writes what `pull` returns
into the store in one transaction. Every call must be idempotent: pushing the same batch twice creates nothing new,
pulling twice returns the same labels, and a label corrected by a person comes back in its newest form.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

# (class_id, cx, cy, w, h) normalised to [0, 1], the YOLO txt convention.
YoloBox = tuple[int, float, float, float, float]
# The model's pre-annotation: a YoloBox plus its confidence.
PredictedBox = tuple[int, float, float, float, float, float]


class AnnotationError(RuntimeError):
    """A backend could not do what was asked; the message says what and what to do. Nothing was written."""


@dataclass(frozen=True)
class BatchItem:
    image_id: int
    sha256: str
    path: Path  # absolute path of the original image file
    width: int
    height: int
    rank: int  # 1 = most informative
    score: float  # the selection score (what annotators can sort by)
    components: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    predictions: tuple[PredictedBox, ...] = ()

    @property
    def staged_name(self) -> str:
        """A file name unique within the workspace: two files with the same stem never collide."""
        return f"{self.sha256[:12]}_{self.path.stem}{self.path.suffix.lower()}"


@dataclass(frozen=True)
class Batch:
    round: int
    model_version: str  # e.g. "r3-1a2b3c4d": round and the model's hash
    classes: tuple[str, ...]  # class id -> name
    items: tuple[BatchItem, ...]

    def by_sha(self) -> dict[str, BatchItem]:
        return {item.sha256: item for item in self.items}


@dataclass(frozen=True)
class AnnotatedImage:
    """One finished image as the annotators left it."""

    sha256: str
    status: Literal["labeled", "skipped"]  # skipped: the annotator passed; the image goes back to the pool
    boxes: tuple[YoloBox, ...] = ()  # empty with status "labeled": a valid "no objects" image
    annotator: str | None = None
    lead_time_s: float | None = None  # time the person spent: the real cost of a label
    updated_at: str | None = None  # ISO time of the annotation used (the newest one)
    source: str = ""  # where it came from, e.g. "label_studio task 17" or "labels/abc_img.txt"


@dataclass(frozen=True)
class Problem:
    """A finished item that could not be taken as it is; it stays in the batch and the message says why."""

    sha256: str | None
    where: str  # the task, file or line
    message: str


@dataclass(frozen=True)
class PullResult:
    labels: tuple[AnnotatedImage, ...]
    problems: tuple[Problem, ...] = ()


@dataclass(frozen=True)
class AnnotationProgress:
    total: int
    done: int  # labeled or skipped
    skipped: int = 0


class BackendState(Protocol):
    """A small persistent key-value place for a backend's own bookkeeping (project id, task ids...)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


@runtime_checkable
class AnnotationBackend(Protocol):
    name: str

    def push(self, batch: Batch) -> None:
        """Send the batch with its pre-annotations. Idempotent: a second push of the same batch adds nothing."""
        ...

    def progress(self, batch: Batch) -> AnnotationProgress:
        """How many of the batch's images are finished."""
        ...

    def pull(self, batch: Batch) -> PullResult:
        """The finished images of the batch, newest annotation of each. Reads only; writes nothing."""
        ...
