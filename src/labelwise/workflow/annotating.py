"""Annotating a round: the batch as the backends see it, the configured backend, export to a folder, import of
label files, pull from a backend; labels are written in one transaction and complete the round when none is
pending."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from labelwise.annotation.base import AnnotationBackend, Batch, BatchItem, PullResult
from labelwise.fileio import atomic_write_text
from labelwise.store import Store
from labelwise.workflow.context import LoopError, WorkspaceContext, crash_point
from labelwise.workflow.selecting import PERCEPTUAL_HASH


@dataclass
class ImportReport:
    imported: int = 0
    skipped: int = 0
    pending: int = 0
    complete: bool = False
    problems: list[str] = field(default_factory=list)


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
    items = []
    for r in rows:
        preds: tuple = ()
        if current.model_hash:
            det = ctx.store.detections(r["sha256"], current.model_hash, ctx.config.imgsz)
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
    folder_backend.push(current)
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


def import_labels(ctx: WorkspaceContext, folder: Path) -> ImportReport:
    """Take YOLO txt labels for the current batch from `folder` (partial imports are fine)."""
    from labelwise.annotation.folder import read_labels

    folder = Path(folder)
    if folder.is_file() and folder.name.lower().endswith((".zip", ".tar", ".tar.gz", ".tgz")):
        from labelwise.archive import safe_extract

        target = ctx.root / "imports" / f"{folder.name.split('.')[0]}-{int(time.time())}"
        safe_extract(folder, target)
        folder = target
    if not folder.is_dir():
        raise LoopError(f"{folder} is not a folder of YOLO label files")
    current = batch(ctx)
    return apply(ctx, current, read_labels(folder, current))


def pull(ctx: WorkspaceContext, from_backend: AnnotationBackend | None = None) -> bool:
    """Fetch finished labels from the backend into the store. True when the round's batch is complete."""
    from_backend = from_backend or backend(ctx)
    current = batch(ctx)
    report = apply(ctx, current, from_backend.pull(current))
    return report.complete


def apply(ctx: WorkspaceContext, current: Batch, result: PullResult) -> ImportReport:
    """Write pulled labels in one transaction; complete the round when nothing is pending."""
    store = ctx.store
    by_sha = current.by_sha()
    report = ImportReport(problems=[p.message if p.where in p.message else f"{p.where}: {p.message}"
                                    for p in result.problems])
    pending_before = {r["image_id"] for r in store.selection(current.round) if r["outcome"] == "pending"}
    with store.transaction():
        for label in result.labels:
            item = by_sha.get(label.sha256)
            if item is None:
                report.problems.append(f"{label.source}: not an image of round {current.round}'s batch; ignored")
                continue
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
        outcomes = [r["outcome"] for r in store.selection(current.round)]
        report.pending = outcomes.count("pending")
        # An empty batch is never complete: closing its round would open the next at once, with nothing learned.
        if outcomes and report.pending == 0 and store.current_round().step == "annotate":
            store.update_round(current.round, step="done", finished_at=time.strftime("%Y-%m-%dT%H:%M:%S"))
            report.complete = True
    return report
