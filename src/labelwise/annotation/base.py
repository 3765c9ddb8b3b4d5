"""The protocol every annotation backend speaks, and the values that cross it.

A backend moves one round's batch to where people draw boxes and brings their boxes back. It knows nothing about
rounds, strategies or the store: the workflow (`labelwise.loop`) hands it a `Batch` and writes what `pull` returns
into the store in one transaction. Every call must be idempotent: pushing the same batch twice creates nothing new,
pulling twice returns the same labels, and a label corrected by a person comes back in its newest form.

What the workflow gets back from `pull` (a `PullResult`):

* `labels`: the accepted images (status "labeled", with their boxes) and the skipped ones (status "skipped");
* `problems`: every finished item that cannot be taken, as data (task id, image, region, why, what to do) whose
  `str()` is one line for the user;
* `tasks`: one `TaskOutcome` per image of the batch, accepted / rejected / skipped / pending;
* `held`: images whose newest annotation is rejected: a label pulled earlier for them is out of date, so the
  workflow keeps them out of training until a valid annotation is pulled.

`progress` gives the same four counts without reading more than it needs; `done` counts accepted and skipped only.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
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
    # Where it came from, unique across the backend's projects, e.g.
    # "label_studio:project=3:task=17:annotation=40", "cvat:task=5:job=9:frame=2" or "labels/abc_img.txt".
    source: str = ""


TaskStatus = Literal["accepted", "rejected", "skipped", "pending"]
TASK_STATUSES: tuple[TaskStatus, ...] = ("accepted", "rejected", "skipped", "pending")


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@dataclass(frozen=True)
class Problem:
    """A finished item that could not be taken as it is; it stays in the batch and the message says why.

    The fields say where (`task_id`, `image`, `region`), why, and what to do (`fix`); `message` is the one-line
    rendering (`str(problem)`), composed from the fields when not given.
    """

    sha256: str | None
    where: str  # the task, file or line, e.g. "Label Studio task 17 (image 1a2b3c4d5e6f_tank.jpg)"
    message: str = ""
    task_id: str | None = None  # the backend's id of the task / file / job the item lives in
    image: str | None = None  # the image's staged name (or the name the export used)
    region: str | None = None  # the region / shape / line inside the task, when the problem is one region
    why: str = ""
    fix: str = ""
    annotation_id: str | None = None

    def __post_init__(self) -> None:
        if not self.message:
            head = self.where + (f", {self.region}" if self.region and self.region not in self.where else "")
            text = f"{head}: {self.why}" if self.why else head
            if self.fix:
                text = f"{text.rstrip('.')}. {self.fix}"
            object.__setattr__(self, "message", text)
        object.__setattr__(self, "message", _one_line(self.message))

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class TaskOutcome:
    """Where one image of the batch stands on the backend.

    accepted: a valid annotation was taken (it is among `PullResult.labels`); rejected: the annotation that counts
    cannot be taken (see `PullResult.problems`; the image is `held`); skipped: the annotators passed on it; pending:
    nobody has finished it yet.
    """

    sha256: str
    status: TaskStatus
    image: str = ""  # staged name
    task_id: str | None = None
    annotation_id: str | None = None  # the annotation judged (accepted / rejected / skipped)
    source: str = ""  # the label source string of that annotation
    updated_at: str | None = None
    skipped_by: tuple[str, ...] = ()  # annotators who skipped while another annotator's valid boxes were taken
    replaces: tuple[str, ...] = ()  # older annotation ids of the task that the judged one supersedes


@dataclass(frozen=True)
class AnnotationProgress:
    """How far the batch is: every image is exactly one of accepted, rejected, skipped or pending."""

    total: int
    accepted: int = 0
    rejected: int = 0  # finished by a person, but not usable as it is: it must be corrected in the tool
    skipped: int = 0
    pending: int | None = None  # None: everything not counted above
    held: int = 0  # images whose label in the store (from an earlier pull) is out of date: keep them out of training

    def __post_init__(self) -> None:
        counted = self.accepted + self.rejected + self.skipped
        if self.pending is None:
            object.__setattr__(self, "pending", max(0, self.total - counted))
        if counted + int(self.pending or 0) != self.total:
            raise ValueError(f"progress counts {counted} + {self.pending} pending do not add up to {self.total}")

    @classmethod
    def of(cls, outcomes: "Iterable[TaskOutcome]", total: int | None = None, held: int = 0) -> "AnnotationProgress":
        outcomes = list(outcomes)
        counts = {s: 0 for s in TASK_STATUSES}
        for o in outcomes:
            counts[o.status] += 1
        return cls(total=len(outcomes) if total is None else total, accepted=counts["accepted"],
                   rejected=counts["rejected"], skipped=counts["skipped"],
                   pending=None if total is not None else counts["pending"], held=held)

    @property
    def done(self) -> int:
        """Images nothing more is needed for: accepted or skipped (never rejected ones)."""
        return self.accepted + self.skipped

    @property
    def complete(self) -> bool:
        return self.done >= self.total

    def __str__(self) -> str:
        text = f"{self.accepted}/{self.total} accepted, {self.rejected} rejected, {self.skipped} skipped, {self.pending} pending"
        if self.rejected:
            text += " (rejected ones need a correction in the annotation tool)"
        return text


@dataclass(frozen=True)
class PullResult:
    labels: tuple[AnnotatedImage, ...]
    problems: tuple[Problem, ...] = ()
    # One per image of the batch, when the backend can tell (every backend here does).
    tasks: tuple[TaskOutcome, ...] = ()
    # sha256 of images whose current annotation on the backend is rejected: any label the store holds for them from
    # an earlier pull has been replaced by the annotator, so keep them out of training until a valid one is pulled.
    held: tuple[str, ...] = ()

    def status_of(self, sha256: str) -> TaskStatus:
        for o in self.tasks:
            if o.sha256 == sha256:
                return o.status
        for lab in self.labels:
            if lab.sha256 == sha256:
                return "accepted" if lab.status == "labeled" else "skipped"
        if any(p.sha256 == sha256 for p in self.problems):
            return "rejected"
        return "pending"

    def with_status(self, status: TaskStatus) -> tuple[str, ...]:
        """sha256 of the images with this status."""
        return tuple(o.sha256 for o in self.tasks if o.status == status)

    def counts(self, total: int | None = None) -> AnnotationProgress:
        """accepted / rejected / skipped / pending of the batch (`total`: the batch size, when `tasks` is empty)."""
        if self.tasks:
            return AnnotationProgress.of(self.tasks, held=len(self.held))
        accepted = sum(1 for lab in self.labels if lab.status == "labeled")
        skipped = sum(1 for lab in self.labels if lab.status == "skipped")
        rejected = len({p.sha256 for p in self.problems if p.sha256 is not None} - {lab.sha256 for lab in self.labels})
        n = total if total is not None else accepted + skipped + rejected
        return AnnotationProgress(n, accepted, rejected, skipped, held=len(self.held))


@dataclass(frozen=True)
class PushReport:
    round: int
    sent: int  # tasks / images created by this push
    already_there: int = 0  # found on the backend from an earlier push (nothing re-sent)
    left_out: int = 0  # images of the batch not sent because the caller said they are finished
    where: str = ""  # e.g. "Label Studio project 12 at http://127.0.0.1:8080"

    def __str__(self) -> str:
        text = f"round {self.round}: sent {self.sent} image(s)"
        if self.already_there:
            text += f", {self.already_there} already there"
        if self.left_out:
            text += f", {self.left_out} finished image(s) left out"
        return text + (f" to {self.where}" if self.where else "")


@dataclass(frozen=True)
class ReviewNote:
    """Why an image goes back to the annotators for a second look (label QA, `labelwise annotate push --review`).

    issue: missing_box, wrong_class or badly_placed; text: one line for the reviewer; score: the label quality score
    (low: most likely wrong); box: the box behind the suspicion (class, cx, cy, w, h normalised), or None; label: the
    label as it stands."""

    sha256: str
    issue: str
    text: str
    score: float
    box: tuple | None = None
    label: tuple[YoloBox, ...] = ()


@dataclass(frozen=True)
class RetireReport:
    """What `retire` did to an old batch: unlabeled work removed from the annotators' reach, labeled work kept."""

    round: int
    removed: tuple[str, ...] = ()  # sha256 of images whose unlabeled task was deleted
    kept: tuple[str, ...] = ()  # sha256 of images kept: annotated (or skipped) on the backend, or asked to keep
    missing: tuple[str, ...] = ()  # sha256 of images with no task on the backend (never pushed, or already gone)
    details: tuple[str, ...] = ()  # one line per image: "task 17 (image ab12_tank.jpg): deleted, no annotation"

    def __str__(self) -> str:
        return (f"round {self.round}: removed {len(self.removed)} unlabeled task(s), kept {len(self.kept)} "
                f"labeled or kept one(s), {len(self.missing)} not on the backend")


class BackendState(Protocol):
    """A small persistent key-value place for a backend's own bookkeeping (project id, task ids...)."""

    def get(self, key: str, default: Any = None) -> Any: ...

    def set(self, key: str, value: Any) -> None: ...


@runtime_checkable
class AnnotationBackend(Protocol):
    name: str

    def push(self, batch: Batch, *, finished: Collection[str] = ()) -> PushReport | None:
        """Send the batch with its pre-annotations. Idempotent: a second push of the same batch adds nothing.

        `finished`: sha256 of images the workflow already has a final outcome for (labeled or skipped); they are not
        sent when the backend has no task for them yet (e.g. to a new project)."""
        ...

    def progress(self, batch: Batch) -> AnnotationProgress:
        """Accepted / rejected / skipped / pending images of the batch (`done` counts accepted and skipped only)."""
        ...

    def pull(self, batch: Batch) -> PullResult:
        """The finished images of the batch, newest annotation of each. Reads only; writes nothing."""
        ...

    def retire(self, batch: Batch, *, keep: Collection[str] = ()) -> RetireReport:
        """After a re-selection: take the batch's unlabeled images out of the annotators' reach (annotated ones and
        the sha256 in `keep` stay). The workflow calls it for the old batch before pushing the new one."""
        ...


class FileCheck:
    """Whether a batch image's file is still the one selected (same sha256), hashing each file once per (size, mtime).

    Backends check before taking boxes: boxes drawn on a file that has since changed may not fit it.
    """

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int, int, str]] = {}

    def problem(self, item: BatchItem) -> str | None:
        """None when the file is unchanged, else why it cannot be checked or how it changed."""
        from labelwise.fileio import sha256_file

        try:
            st = item.path.stat()
            key = str(item.path)
            seen = self._seen.get(key)
            if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns):
                digest = seen[2]
            else:
                digest = sha256_file(item.path)
                self._seen[key] = (st.st_size, st.st_mtime_ns, digest)
        except OSError as exc:
            return f"cannot read the image file {item.path} to check it ({exc.strerror or exc})"
        if digest != item.sha256:
            return (f"the image file {item.path} changed since it was selected (sha256 {digest[:12]} is not "
                    f"{item.sha256[:12]}); its boxes may not fit the file")
        return None
