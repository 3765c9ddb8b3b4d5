"""Annotating a round: the batch as the backends see it, the configured backend, export to a folder, import of
label files, pull from a backend; labels are written in one transaction and complete the round when nothing is
pending and nothing is rejected.

Every way labels come back (`pull`, `wait`, `import_labels`, `run`) returns an `ImportReport`: what was taken, the
round's counts (accepted / rejected / skipped / pending: "done" is accepted and skipped only), every problem as the
backend described it (task, image, region, why, what to do) and the command to run next. The last pull's problems
are kept in the store, so `labelwise status` lists the rejected tasks without asking the backend again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwise.annotation.base import (
    AnnotationBackend,
    AnnotationProgress,
    Batch,
    BatchItem,
    Problem,
    PullResult,
    PushReport,
    RetireReport,
)
from labelwise.fileio import atomic_write_text
from labelwise.store import Store
from labelwise.workflow.context import LoopError, WorkspaceContext, crash_point
from labelwise.workflow.selecting import PERCEPTUAL_HASH

# What the user calls each backend's annotation tool, in messages.
TOOL = {"folder": "the label files", "label_studio": "Label Studio", "cvat": "CVAT"}
KV = "annotation"  # the store's kv namespace for the workflow's annotation bookkeeping


@dataclass
class ImportReport:
    """What taking labels back did, and where the round stands now.

    imported: labels written by this call (new or changed); skipped: images newly passed on (back to the pool);
    pending: images of the batch with no label yet (rejected ones included); complete: the round is done.
    progress: every image of the batch as exactly one of accepted / rejected / skipped / pending (done = accepted +
    skipped). problems: every item that could not be taken, one line each (`str()`), naming task, image and region,
    why, and what to do. next_command: what to run now.
    """

    imported: int = 0
    skipped: int = 0
    pending: int = 0
    complete: bool = False
    problems: list[Problem] = field(default_factory=list)
    round: int = 0
    progress: AnnotationProgress | None = None
    via: str = ""  # where the labels came from: the backend's name, or "import"
    next_command: str = ""
    timed_out: bool = False  # `wait` gave up before the batch was finished
    # Images of the batch held out of training: a label of theirs was pulled before, but the annotation that now
    # counts cannot be taken, so that label is out of date. (staged name, why), and which changed with this call.
    held: list[tuple[str, str]] = field(default_factory=list)
    newly_held: list[str] = field(default_factory=list)
    released: list[str] = field(default_factory=list)  # held before, a valid annotation was taken now
    notes: list[str] = field(default_factory=list)  # one line each: what was left alone, and why
    push: PushReport | None = None  # set when the batch was just pushed and nothing was pulled (run's first push)
    qa: Any = None  # labelwise.workflow.qa.QAReport: the label QA of the round after labels were written, or None

    @property
    def rejected(self) -> int:
        """Images whose annotation cannot be taken as it is (each has at least one problem above)."""
        return self.progress.rejected if self.progress is not None else 0

    @property
    def needs_correction(self) -> bool:
        """The round has rejected work (held images included): someone must correct it in the annotation tool."""
        return self.rejected > 0 or bool(self.held)


class StoreBackendState:
    """BackendState kept in the store's kv table, one namespace per backend."""

    def __init__(self, store: Store, namespace: str):
        self.store, self.namespace = store, namespace

    def get(self, key: str, default: Any = None) -> Any:
        return self.store.kv_get(self.namespace, key, default)

    def set(self, key: str, value: Any) -> None:
        self.store.kv_set(self.namespace, key, value)


def batch(ctx: WorkspaceContext, round_no: int | None = None) -> Batch:
    """The selected batch of `round_no` (default: the current round) with the model's boxes as pre-annotations."""
    current = ctx.store.current_round() if round_no is None else next(
        (r for r in ctx.store.rounds() if r.round == round_no), None)
    if current is None or current.step not in ("annotate", "done"):
        raise LoopError("no batch has been selected yet; run `labelwise select`")
    rows = ctx.store.selection(current.round)
    found = ctx.store.detections_many([r["sha256"] for r in rows], current.model_hash,
                                      ctx.config.imgsz, features=False) if current.model_hash else {}
    items = []
    for r in rows:
        preds: tuple = ()
        det = found.get(r["sha256"])
        if det is not None:
            preds = tuple(b for b in det.yolo_boxes() if b[5] >= 0.25)
        items.append(BatchItem(
            image_id=r["image_id"], sha256=r["sha256"], path=Path(r["path"]), width=r["width"],
            height=r["height"], rank=r["rank"], score=r["score"], components=r["components"],
            reason=r["reason"], predictions=preds,
        ))
    version = f"r{current.round}" + (f"-{current.model_hash[:8]}" if current.model_hash else "")
    return Batch(round=current.round, model_version=version, classes=tuple(ctx.config.classes),
                 items=tuple(items))


def backend(ctx: WorkspaceContext, name: str | None = None) -> AnnotationBackend:
    """The annotation backend named in labelwise.yaml (`annotation: backend:`, default folder), or `name`."""
    from labelwise.annotation import make_backend

    options = dict(ctx.config.annotation)
    name = name or options.pop("backend", "folder")
    options.pop("backend", None)
    return make_backend(name, options, StoreBackendState(ctx.store, f"backend:{name}"), ctx.root,
                        tuple(ctx.config.classes))


def export(ctx: WorkspaceContext) -> Path:
    """Stage the current batch as a folder with a manifest (the folder backend), whatever backend is set."""
    from labelwise.annotation.folder import FolderBackend

    current = batch(ctx)
    folder_backend = FolderBackend(ctx.root / "annotation")
    record_push(ctx, current.round, "folder", folder_backend.push(current))
    duplicates = ctx.store.duplicate_skips(current.round)
    manifest = folder_backend.folder(current) / "duplicates_skipped.csv"
    if duplicates:
        import csv
        import io
        import re

        buf = io.StringIO()  # the csv module: paths may hold commas or quotes
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image_path", "duplicate_of_path", "duplicate_of", "cosine_similarity",
                         "hamming_distance"])
        for image_id, of, sim in duplicates:
            found = re.fullmatch(r"image (\d+) \((.+)\)", of)  # as selecting.describe_duplicate writes it
            of_path = str(ctx.store.image(int(found.group(1))).path) if found else ""
            near = ["", f"{sim:.0f}"] if PERCEPTUAL_HASH in of else [f"{sim:.4f}", ""]
            writer.writerow([str(ctx.store.image(image_id).path), of_path, of, *near])
        atomic_write_text(manifest, buf.getvalue())
    elif manifest.exists():  # from an earlier selection of this round that did skip duplicates
        manifest.unlink()
    return folder_backend.folder(current)


def just_pushed(ctx: WorkspaceContext, current: Batch, to_backend: AnnotationBackend,
                report: PushReport | None) -> ImportReport:
    """The report of a batch that was pushed a moment ago: nothing can have been annotated yet, nothing is pulled (a
    push is never labeled work); the next command waits for the annotators."""
    outcomes = {r["sha256"]: r["outcome"] for r in ctx.store.selection(current.round)}
    progress = round_progress(current, PullResult(()), outcomes, set(held_in(ctx, current)))
    out = ImportReport(pending=sum(1 for o in outcomes.values() if o == "pending"), round=current.round,
                       progress=progress, via=to_backend.name, push=report)
    out.next_command = next_command(ctx, out)
    return out


def finished(ctx: WorkspaceContext, round_no: int) -> set[str]:
    """sha256 of the round's images the store has a final outcome for (labeled or skipped)."""
    return {r["sha256"] for r in ctx.store.selection(round_no) if r["outcome"] in ("labeled", "skipped")}


def push(ctx: WorkspaceContext, to_backend: AnnotationBackend | None = None, *,
         new_project: bool = False) -> PushReport | None:
    """Send the current batch to the backend (idempotent; images already labeled or skipped are not sent anew) and
    record that it was pushed, and where. `new_project` (Label Studio): forget the recorded project and send the
    round's unfinished images to a new one."""
    from labelwise.annotation.base import AnnotationError

    to_backend = to_backend or backend(ctx)
    current = batch(ctx)
    done = finished(ctx, current.round)
    if new_project:
        to_new = getattr(to_backend, "push_to_new_project", None)
        if to_new is None:
            raise AnnotationError(f"--new-project only applies to Label Studio, not the {to_backend.name} backend")
        report = to_new(current, finished=done)
    else:
        report = to_backend.push(current, finished=done)
    record_push(ctx, current.round, to_backend.name, report)
    return report


def record_push(ctx: WorkspaceContext, round_no: int, name: str, report: PushReport | None) -> None:
    """Record that the round's batch went to backend `name` (export records the folder backend)."""
    before = pushed(ctx, round_no, name) or {}
    ctx.store.kv_set(KV, f"round/{round_no}/pushed/{name}", {
        "at": before.get("at") or time.strftime("%Y-%m-%dT%H:%M:%S"), "backend": name,
        "where": (report.where if report is not None else "") or before.get("where", "")})


def pushed(ctx: WorkspaceContext, round_no: int, name: str | None = None) -> dict[str, Any] | None:
    """{"at", "backend", "where"} of the round's first push to `name` (default: the configured backend), or None
    when it was not pushed there (by this version of labelwise)."""
    return ctx.store.kv_get(KV, f"round/{round_no}/pushed/{name or configured_backend(ctx)}")


def retire(ctx: WorkspaceContext, old: Batch, keep: set[str]) -> list[tuple[str, RetireReport]]:
    """After a re-selection of `old`'s round: take the old batch's unlabeled work out of the annotators' reach
    wherever it was pushed (the configured backend; the exported folder), keeping the images in `keep` (the new
    batch's). Returns (where, report) per place. Raises AnnotationError when a backend cannot be reached."""
    from labelwise.annotation.folder import FolderBackend

    done: list[tuple[str, RetireReport]] = []
    name = configured_backend(ctx)
    places: list[tuple[str, AnnotationBackend]] = []
    if pushed(ctx, old.round, name) is not None and name != "folder":
        places.append((TOOL.get(name, name), backend(ctx)))
    staged = pushed(ctx, old.round, "folder")
    if staged is not None and staged.get("where"):  # the round's folder: the export, or the folder backend's push
        places.append((staged["where"], FolderBackend(Path(staged["where"]).parent)))
    for where, be in places:
        done.append((where, be.retire(old, keep=keep)))
    return done


def configured_backend(ctx: WorkspaceContext) -> str:
    """The name of the backend labelwise.yaml configures (`annotation: backend:`), default folder."""
    return str(dict(ctx.config.annotation or {}).get("backend") or "folder")


ARCHIVES = (".zip", ".tar", ".tar.gz", ".tgz")
# Files of a label folder that are not labels of images (YOLO and CVAT exports, the staged round folder).
NOT_LABELS = {"classes.txt", "skipped.txt", "retired.txt", "obj.names", "obj.data", "train.txt", "val.txt"}


def import_labels(ctx: WorkspaceContext, folder: Path) -> ImportReport:
    """Take YOLO txt labels for the current batch from `folder`, or from a .zip / tar archive unpacked into a
    temporary folder removed afterwards (partial imports are fine). Label files of images that are not in the
    batch are ignored, and the report says how many, naming a few."""
    folder = Path(folder)
    if folder.is_file() and folder.name.lower().endswith(ARCHIVES):
        from labelwise.archive import extracted

        with extracted(folder) as unpacked:
            return _import_folder(ctx, unpacked, source=folder, shown_as=f"{folder}:")
    if not folder.is_dir():
        raise LoopError(f"{folder} is not a folder of YOLO label files")
    return _import_folder(ctx, folder, source=folder)


def _import_folder(ctx: WorkspaceContext, folder: Path, source: Path, shown_as: str | None = None) -> ImportReport:
    from labelwise.annotation.folder import match_label_files, read_labels

    current = batch(ctx)
    result = read_labels(folder, current)
    matched = {p.resolve() for p in match_label_files(folder, current).values()}
    ignored = sorted(p for p in folder.rglob("*.txt") if p.resolve() not in matched and p.name not in NOT_LABELS)
    if shown_as is not None:  # an archive: name its members, not the temporary folder they were unpacked into
        result = _renamed(result, f"{folder}{'/'}", shown_as)
    report = apply(ctx, current, result, via="import", source=source)
    if ignored:
        names = [f"{shown_as or ''}{p.relative_to(folder)}" if shown_as else str(p.relative_to(folder))
                 for p in ignored[:5]]
        report.notes.append(
            f"{len(ignored)} label file(s) in {source} are not for an image of round {current.round}'s batch and were "
            f"ignored, e.g. {', '.join(names)}{' ...' if len(ignored) > 5 else ''} (labels of other images go in "
            f"with: labelwise add --labeled IMAGES -w {ctx.root})")
    return report


def _renamed(result: PullResult, old: str, new: str) -> PullResult:
    """The result with every mention of the path prefix `old` (a temporary folder) written as `new`."""
    def fix(text: str | None) -> str | None:
        return None if text is None else text.replace(old, new)

    labels = tuple(dataclasses.replace(lab, source=fix(lab.source) or "") for lab in result.labels)
    problems = tuple(dataclasses.replace(p, where=fix(p.where) or "", message=fix(p.message) or "",
                                         why=fix(p.why) or "", task_id=fix(p.task_id)) for p in result.problems)
    tasks = tuple(dataclasses.replace(o, source=fix(o.source) or "") for o in result.tasks)
    return dataclasses.replace(result, labels=labels, problems=problems, tasks=tasks)


def pull(ctx: WorkspaceContext, from_backend: AnnotationBackend | None = None) -> ImportReport:
    """Fetch finished labels from the backend into the store; the report says where the round stands."""
    from_backend = from_backend or backend(ctx)
    current = batch(ctx)
    return apply(ctx, current, from_backend.pull(current), via=from_backend.name)


def check(ctx: WorkspaceContext, from_backend: AnnotationBackend | None = None) -> ImportReport:
    """Where the batch stands on the backend, with every problem, writing nothing (`labelwise annotate status`)."""
    from_backend = from_backend or backend(ctx)
    current = batch(ctx)
    result = from_backend.pull(current)
    outcomes = {r["sha256"]: r["outcome"] for r in ctx.store.selection(current.round)}
    held = held_in(ctx, current)
    progress = round_progress(current, result, outcomes, set(held))
    report = ImportReport(pending=progress.pending or 0, round=current.round, progress=progress,
                          problems=list(result.problems), via=from_backend.name,
                          complete=ctx.store.current_round().step == "done", held=list(held.values()))
    report.next_command = next_command(ctx, report)
    return report


def wait(ctx: WorkspaceContext, from_backend: AnnotationBackend | None = None, *, timeout: float = 3600.0,
         interval: float = 2.0, max_interval: float = 60.0, show: bool = True,
         on_progress: Callable[[AnnotationProgress], None] | None = None) -> ImportReport:
    """Poll the backend (back-off from `interval` to `max_interval` while nothing moves) until every image of the
    batch is done, or nothing is left pending but rejected work (waiting cannot finish that: a person must correct
    it), or `timeout` seconds pass; then pull. The report's `timed_out` says whether it gave up."""
    from labelwise.annotation.waiting import poll

    from_backend = from_backend or backend(ctx)
    _, timed_out = poll(from_backend, batch(ctx), timeout=timeout, interval=interval, max_interval=max_interval,
                        show=show, on_progress=on_progress)
    report = pull(ctx, from_backend)
    report.timed_out = timed_out and not report.complete
    return report


def verdicts(result: PullResult) -> dict[str, str]:
    """sha256 -> accepted / rejected / skipped / pending, as the backend judged each image it reported on."""
    said = {o.sha256: str(o.status) for o in result.tasks}
    if not said:  # a backend (or a folder import) that reports no outcomes: from its labels and problems
        said = {lab.sha256: "accepted" if lab.status == "labeled" else "skipped" for lab in result.labels}
        said.update({p.sha256: "rejected" for p in result.problems if p.sha256 is not None and p.sha256 not in said})
    return said


def held_in(ctx: WorkspaceContext, current: Batch) -> dict[str, tuple[str, str]]:
    """sha256 -> (staged name, why) of the batch's images held out of training."""
    by_sha = current.by_sha()
    return {image.sha256: (by_sha[image.sha256].staged_name, reason)
            for image, _round, reason, _since in ctx.store.held(kind="rejected") if image.sha256 in by_sha}


def round_progress(current: Batch, result: PullResult, outcomes: dict[str, str],
                   held: set[str] = frozenset()) -> AnnotationProgress:  # type: ignore[assignment]
    """Every image of the batch as one of accepted / rejected / skipped / pending: rejected when the backend
    refuses its current annotation (or the image is held), else what the store took (labeled / skipped), else what
    the backend says."""
    said = verdicts(result)
    counts = {"accepted": 0, "rejected": 0, "skipped": 0, "pending": 0}
    for item in current.items:
        status = "rejected" if item.sha256 in held else said.get(item.sha256, "pending")
        stored = outcomes.get(item.sha256, "pending")
        if status != "rejected":
            status = {"labeled": "accepted", "skipped": "skipped"}.get(stored, status)
        counts[status if status in counts else "pending"] += 1
    return AnnotationProgress(total=len(current.items), **counts, held=len(held))


def next_command(ctx: WorkspaceContext, report: ImportReport, source: Path | None = None) -> str:
    """What to run now, for the backend the labels came from."""
    ws = f"-w {ctx.root}"
    name = configured_backend(ctx) if report.via in ("", "import") else report.via
    tool = TOOL.get(name, name)
    if report.via == "import":
        again = f"labelwise import {source} {ws}" if source is not None else f"labelwise import LABELS {ws}"
        if report.needs_correction:
            return f"fix the label files named above, then: {again}"
        if report.complete:
            return f"labelwise run {ws}"
        return f"label the {report.pending} pending image(s), then: {again}"
    if report.needs_correction:
        return (f"correct the {report.rejected} rejected image(s) in {tool} (each problem above says what), then: "
                f"labelwise annotate pull {ws}")
    if report.complete:
        return f"labelwise run {ws}"
    staged = pushed(ctx, report.round, "folder") if name == "folder" else None
    if staged and staged.get("where"):
        return (f"put one YOLO txt per image in {Path(staged['where']) / 'labels'} (image names to pass on in "
                f"skipped.txt), then: labelwise annotate pull {ws}")
    return f"labelwise annotate wait {ws}  (it pulls when {tool} has the batch done; or labelwise annotate pull)"


def last_pull(ctx: WorkspaceContext, round_no: int) -> dict[str, Any] | None:
    """What the last pull or import of `round_no` found: {"at", "via", "counts", "problems": [Problem]}, or None."""
    found = ctx.store.kv_get(KV, f"round/{round_no}/last_pull")
    if not found:
        return None
    shas = {r["sha256"] for r in ctx.store.selection(round_no)}
    problems = [Problem(**p) for p in found.get("problems", [])]
    return {**found, "problems": [p for p in problems if p.sha256 is None or p.sha256 in shas]}


def apply(ctx: WorkspaceContext, current: Batch, result: PullResult, via: str = "",
          source: Path | None = None) -> ImportReport:
    """Write pulled labels in one transaction; complete the round when nothing is pending or rejected.

    An image whose label was taken by an earlier pull but whose annotation that counts now is rejected (a newer,
    invalid one) is held: kept out of training (`Store.hold`) until a valid annotation is pulled. When labels were
    written, label QA checks the round (`qa.after_labels`; its report is `report.qa`)."""
    store = ctx.store
    by_sha = current.by_sha()
    report = ImportReport(problems=list(result.problems), round=current.round, via=via)
    pending_before = {r["image_id"] for r in store.selection(current.round) if r["outcome"] == "pending"}
    said = verdicts(result)
    first_problem: dict[str, Problem] = {}
    for problem in result.problems:
        if problem.sha256 is not None:
            first_problem.setdefault(problem.sha256, problem)
    with store.transaction():
        for sha, status in said.items():
            item = by_sha.get(sha)
            if status == "rejected" and item is not None and store.label(item.image_id) is not None:
                why = first_problem.get(sha)
                reason = (f"its label from an earlier pull is out of date: the annotation that counts now was rejected"
                          f" ({why.where}: {why.why or why.message})" if why else
                          "its label from an earlier pull is out of date: the annotation that counts now was rejected")
                if store.hold(item.image_id, current.round, " ".join(reason.split())):
                    report.newly_held.append(item.staged_name)
        for label in result.labels:
            item = by_sha.get(label.sha256)
            if item is None:
                report.notes.append(f"{label.source or 'a label'}: not an image of round {current.round}'s batch; "
                                    "ignored")
                continue
            verdict = said.get(label.sha256)
            if result.tasks and verdict != ("accepted" if label.status == "labeled" else "skipped"):
                # only what the backend marks accepted (a person finished it) is labeled work, never what it merely
                # lists: e.g. the model's own pre-annotations of a task nobody has finished
                report.notes.append(f"{label.source or item.staged_name} (image {item.staged_name}): not taken, the "
                                    f"backend marks it {verdict or 'unknown'}, not {label.status}")
                continue
            if label.status == "labeled" and store.release(item.image_id, kind="rejected"):
                report.released.append(item.staged_name)
            if label.status == "skipped":
                if item.image_id in pending_before:
                    store.set_outcome(current.round, item.image_id, "skipped")
                    report.skipped += 1
                continue
            existing = store.label(item.image_id)
            if existing is not None and [list(b) for b in existing] == [
                    [b[0], *(round(float(v), 8) for v in b[1:5])] for b in label.boxes] \
                    and item.image_id not in pending_before:
                continue  # pulling twice changes nothing
            store.put_label(item.image_id, label.boxes, round_no=current.round, source=label.source,
                            annotator=label.annotator, lead_time_s=label.lead_time_s,
                            updated_at=label.updated_at)
            store.set_outcome(current.round, item.image_id, "labeled")
            report.imported += 1
            crash_point("mid_import")
        selection = store.selection(current.round)
        outcomes = {r["sha256"]: r["outcome"] for r in selection}
        held = held_in(ctx, current)
        report.held = list(held.values())
        report.progress = round_progress(current, result, outcomes, set(held))
        report.pending = sum(1 for o in outcomes.values() if o == "pending")
        # An empty batch is never complete: closing its round would open the next at once, with nothing learned.
        if (selection and report.pending == 0 and not report.needs_correction
                and store.current_round().round == current.round and store.current_round().step == "annotate"):
            store.update_round(current.round, step="done", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
        report.complete = store.current_round().round == current.round and store.current_round().step == "done"
        p = report.progress
        store.kv_set(KV, f"round/{current.round}/last_pull", {
            "at": time.strftime("%Y-%m-%dT%H:%M:%S"), "via": via,
            "counts": {"total": p.total, "accepted": p.accepted, "rejected": p.rejected, "skipped": p.skipped,
                       "pending": p.pending},
            "problems": [dataclasses.asdict(problem) for problem in report.problems]})
    if report.imported:  # new or changed labels: check the round's labels against the model (labelwise.workflow.qa)
        from labelwise.workflow import qa

        report.qa = qa.after_labels(ctx, current.round)
    report.next_command = next_command(ctx, report, source)
    return report
