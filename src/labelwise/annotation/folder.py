"""The plain-folder backend (the default): a round's batch staged as a folder that any tool or person can use.

    annotation/round-003/
        images/<sha12>_<stem>.<ext>      the selected images (hard links where possible, else copies)
        predictions/<same stem>.txt      the model's boxes in YOLO txt (cls cx cy w h conf): pre-annotations
        labels/                          annotators put one YOLO txt per image here (empty file = no objects)
        skipped.txt                      optional: one image name per line that annotators passed on
        retired.txt                      written by `retire`: images taken out after a re-selection
        manifest.json, manifest.csv      every image's rank, score, score components and reason
        classes.txt                      class names, one per line, line number = class id
        review/                          `push_review`: label QA suspects for a second look (see there)

Labels are matched to images by the staged name, or by the original file stem when that is unique in the batch.
A label file that cannot be read makes its image "rejected" (a Problem naming file and line) and held: a label taken
from an earlier version of the file is out of date.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Collection, Mapping
from pathlib import Path

from labelwise.annotation.base import (
    AnnotatedImage,
    AnnotationError,
    AnnotationProgress,
    Batch,
    Problem,
    PullResult,
    PushReport,
    RetireReport,
    ReviewNote,
    TaskOutcome,
)
from labelwise.fileio import replace_dir
from labelwise.pool import parse_yolo_label


def manifest_rows(batch: Batch, per_image: Mapping[str, dict] | None = None) -> list[dict]:
    rows = []
    for item in batch.items:
        rows.append({
            "rank": item.rank,
            "file": f"images/{item.staged_name}",
            "original_path": str(item.path),
            "sha256": item.sha256,
            "width": item.width,
            "height": item.height,
            "score": round(item.score, 6),
            "reason": item.reason,
            **{f"score_{k}": (round(v, 6) if isinstance(v, float) else v) for k, v in item.components.items()},
            "predicted_boxes": len(item.predictions),
            **((per_image or {}).get(item.sha256) or {}),
        })
    return rows


def write_manifest(folder: Path, batch: Batch, extra: dict | None = None,
                   per_image: Mapping[str, dict] | None = None) -> None:
    """manifest.json and manifest.csv of the batch; `per_image`: more columns by sha256 (e.g. label QA's)."""
    rows = manifest_rows(batch, per_image)
    doc = {"round": batch.round, "model_version": batch.model_version, "classes": list(batch.classes),
           "images": rows, **(extra or {})}
    (folder / "manifest.json").write_text(json.dumps(doc, indent=2))
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns or ["rank"])
    writer.writeheader()
    writer.writerows(rows)
    (folder / "manifest.csv").write_text(buf.getvalue())


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def match_label_files(folder: Path, batch: Batch) -> dict[str, Path]:
    """sha256 -> label file in `folder` (searched recursively) for every batch item that has one."""
    files: dict[str, list[Path]] = {}
    if folder.is_dir():
        for path in folder.rglob("*.txt"):
            files.setdefault(path.stem, []).append(path)
    stem_count: dict[str, int] = {}
    for item in batch.items:
        stem_count[item.path.stem] = stem_count.get(item.path.stem, 0) + 1
    found = {}
    for item in batch.items:
        staged = Path(item.staged_name).stem
        candidates = files.get(staged, [])
        if not candidates and stem_count[item.path.stem] == 1:
            by_stem = files.get(item.path.stem, [])
            # Several files with the same stem: prefer the one whose folders mirror the image's own folders.
            if len(by_stem) > 1:
                by_stem = [p for p in by_stem if p.parent.name == item.path.parent.name] or by_stem
            candidates = by_stem[:1] if len(by_stem) == 1 else []
        if candidates:
            found[item.sha256] = candidates[0]
    return found


def read_labels(folder: Path, batch: Batch, source_prefix: str = "") -> PullResult:
    """Parse the YOLO txt files in `folder` for the batch; a malformed file is a Problem naming file and line."""
    labels, problems = [], []
    n_classes = len(batch.classes)
    names = {item.sha256: item.staged_name for item in batch.items}
    for sha, path in match_label_files(folder, batch).items():
        try:
            text = path.read_text(encoding="utf-8")
            boxes = parse_yolo_label(text, n_classes, str(path))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(sha, str(path), f"{exc}. Fix the file and pull again.", task_id=str(path),
                                    image=names.get(sha), why=str(exc), fix="Fix the file and pull again."))
            continue
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(path.stat().st_mtime))
        labels.append(AnnotatedImage(sha, "labeled", tuple(boxes), updated_at=stamp,
                                     source=f"{source_prefix}{path}"))
    return PullResult(tuple(labels), tuple(problems))


class FolderBackend:
    name = "folder"

    def __init__(self, root: Path, hardlink: bool = True):
        self.root = Path(root)
        self.hardlink = hardlink

    def folder(self, batch: Batch) -> Path:
        return self.root / f"round-{batch.round:03d}"

    def push(self, batch: Batch, *, finished: Collection[str] = ()) -> PushReport:
        """Stage the whole batch (once; `finished` changes nothing: the folder is the batch)."""
        target = self.folder(batch)
        if (target / "manifest.json").exists():
            existing = json.loads((target / "manifest.json").read_text())
            if [r["sha256"] for r in existing["images"]] == [i.sha256 for i in batch.items]:
                # already staged; never touch labels/ that annotators may be filling
                return PushReport(batch.round, 0, len(batch.items), where=str(target))
            if any((target / "labels").glob("*.txt")):
                raise AnnotationError(
                    f"{target} holds labels for a different batch; import them (`labelwise import "
                    f"{target / 'labels'}`) or move them away before staging round {batch.round} again")
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".round-{batch.round:03d}."))
        try:
            for sub in ("images", "predictions", "labels"):
                (staging / sub).mkdir()
            for item in batch.items:
                if not item.path.exists():
                    raise AnnotationError(f"image {item.path} (selected, rank {item.rank}) no longer exists; "
                                          "restore it or run `labelwise select` again")
                dst = staging / "images" / item.staged_name
                (_link_or_copy if self.hardlink else shutil.copyfile)(item.path, dst)
                pred = "".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {p:.4f}\n"
                               for c, cx, cy, w, h, p in item.predictions)
                (staging / "predictions" / f"{Path(item.staged_name).stem}.txt").write_text(pred)
            (staging / "classes.txt").write_text("".join(f"{c}\n" for c in batch.classes))
            write_manifest(staging, batch)
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return PushReport(batch.round, len(batch.items), where=str(target))

    def review_folder(self, batch: Batch) -> Path:
        return self.folder(batch) / "review"

    def push_review(self, batch: Batch, notes: Mapping[str, ReviewNote]) -> PushReport:
        """Stage label QA suspects (`batch`: the round's suspects) for a second look in the round folder's review/:

            images/        the suspect images
            current/       each image's label as it stands (YOLO txt): copy it to labels/ and correct it there
            suspects/      the box behind the suspicion (YOLO txt, one line; empty when there is none)
            predictions/   the model's boxes (cls cx cy w h conf)
            labels/        corrected labels go here; a file equal to current/ confirms the label as it is
            manifest.json, manifest.csv   every suspect's issue, label quality score, box and the line to read

        Files already in labels/ (a review under way) are kept for the images still under review."""
        target = self.review_folder(batch)
        self.root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=f".review-{batch.round:03d}."))
        try:
            for sub in ("images", "current", "suspects", "predictions", "labels"):
                (staging / sub).mkdir()
            stems = {Path(item.staged_name).stem for item in batch.items}
            for old in (target / "labels").glob("*.txt") if (target / "labels").is_dir() else ():
                if old.stem in stems:
                    shutil.copyfile(old, staging / "labels" / old.name)
            for item in batch.items:
                if not item.path.exists():
                    raise AnnotationError(f"image {item.path} (a label QA suspect of round {batch.round}) no longer "
                                          "exists; restore it to review its label")
                stem = Path(item.staged_name).stem
                (_link_or_copy if self.hardlink else shutil.copyfile)(item.path, staging / "images" / item.staged_name)
                note = notes.get(item.sha256)
                label = note.label if note is not None else ()
                (staging / "current" / f"{stem}.txt").write_text(
                    "".join(f"{int(c)} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in label))
                box = note.box if note is not None and note.box else None
                (staging / "suspects" / f"{stem}.txt").write_text(
                    f"{int(box[0])} {box[1]:.6f} {box[2]:.6f} {box[3]:.6f} {box[4]:.6f}\n" if box else "")
                (staging / "predictions" / f"{stem}.txt").write_text("".join(
                    f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f} {p:.4f}\n" for c, cx, cy, w, h, p in item.predictions))
            (staging / "classes.txt").write_text("".join(f"{c}\n" for c in batch.classes))
            extra = {sha: {"qa_issue": n.issue, "qa_score": round(n.score, 6), "qa_note": n.text,
                           "qa_box": " ".join(f"{v:.6g}" for v in n.box) if n.box else ""} for sha, n in notes.items()}
            write_manifest(staging, batch, {"review": "label QA suspects: put corrected labels in labels/"},
                           per_image=extra)
            replace_dir(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return PushReport(batch.round, len(batch.items), where=str(target))

    def pull_review(self, batch: Batch) -> PullResult:
        """The labels in review/labels for the suspects in `batch` (a malformed file is a Problem)."""
        return read_labels(self.review_folder(batch) / "labels", batch)

    def _skipped(self, batch: Batch) -> set[str]:
        path = self.folder(batch) / "skipped.txt"
        if not path.exists():
            return set()
        names = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        return {i.sha256 for i in batch.items if i.staged_name in names or Path(i.staged_name).stem in names}

    def _retired(self, batch: Batch) -> set[str]:
        path = self.folder(batch) / "retired.txt"
        if not path.exists():
            return set()
        names = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        return {i.sha256 for i in batch.items if i.staged_name in names}

    def progress(self, batch: Batch) -> AnnotationProgress:
        return self.pull(batch).counts()

    def pull(self, batch: Batch) -> PullResult:
        """Labels of the batch's images (a readable label file wins over skipped.txt); one outcome per image."""
        result = read_labels(self.folder(batch) / "labels", batch)
        labeled = {a.sha256 for a in result.labels}
        rejected = {p.sha256 for p in result.problems if p.sha256 is not None} - labeled
        skipped_shas = self._skipped(batch) - labeled - rejected
        skipped = tuple(AnnotatedImage(sha, "skipped", source="skipped.txt") for sha in sorted(skipped_shas))
        retired = self._retired(batch) - labeled - rejected - skipped_shas
        sources = {a.sha256: a.source for a in result.labels}
        outcomes = []
        for item in batch.items:
            sha = item.sha256
            if sha in retired:
                continue
            status = ("accepted" if sha in labeled else "rejected" if sha in rejected
                      else "skipped" if sha in skipped_shas else "pending")
            outcomes.append(TaskOutcome(sha, status, item.staged_name, task_id=None,
                                        source=sources.get(sha, "skipped.txt" if status == "skipped" else "")))
        held = tuple(o.sha256 for o in outcomes if o.status == "rejected")
        return PullResult(result.labels + skipped, result.problems, tuple(outcomes), held)

    def retire(self, batch: Batch, *, keep: Collection[str] = ()) -> RetireReport:
        """Remove the staged image (and prediction) of every image with no label file and not skipped, so nobody
        labels it; list them in retired.txt. Labeled, skipped and `keep` images stay."""
        folder = self.folder(batch)
        if not (folder / "manifest.json").exists():
            return RetireReport(batch.round, missing=tuple(i.sha256 for i in batch.items),
                                details=(f"{folder} was never staged",))
        labeled = set(match_label_files(folder / "labels", batch))
        skipped = self._skipped(batch)
        removed, kept, details = [], [], []
        for item in batch.items:
            if item.sha256 in labeled or item.sha256 in skipped or item.sha256 in set(keep):
                kept.append(item.sha256)
                why = "labeled" if item.sha256 in labeled else "skipped" if item.sha256 in skipped else "asked to keep it"
                details.append(f"images/{item.staged_name}: kept, {why}")
                continue
            (folder / "images" / item.staged_name).unlink(missing_ok=True)
            (folder / "predictions" / f"{Path(item.staged_name).stem}.txt").unlink(missing_ok=True)
            removed.append(item.sha256)
            details.append(f"images/{item.staged_name}: removed, no label file")
        if removed:
            names = {i.staged_name for i in batch.items if i.sha256 in set(removed)}
            old = (folder / "retired.txt").read_text().splitlines() if (folder / "retired.txt").exists() else []
            (folder / "retired.txt").write_text("".join(f"{n}\n" for n in sorted((set(old) - {""}) | names)))
        return RetireReport(batch.round, tuple(removed), tuple(kept), (), tuple(details))
