"""The plain-folder backend (the default): a round's batch staged as a folder that any tool or person can use.

    annotation/round-003/
        images/<sha12>_<stem>.<ext>      the selected images (hard links where possible, else copies)
        predictions/<same stem>.txt      the model's boxes in YOLO txt (cls cx cy w h conf): pre-annotations
        labels/                          annotators put one YOLO txt per image here (empty file = no objects)
        skipped.txt                      optional: one image name per line that annotators passed on
        manifest.json, manifest.csv      every image's rank, score, score components and reason
        classes.txt                      class names, one per line, line number = class id

Labels are matched to images by the staged name, or by the original file stem when that is unique in the batch.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from labelwise.annotation.base import (
    AnnotatedImage,
    AnnotationError,
    AnnotationProgress,
    Batch,
    Problem,
    PullResult,
)
from labelwise.fileio import replace_dir
from labelwise.pool import parse_yolo_label


def manifest_rows(batch: Batch) -> list[dict]:
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
        })
    return rows


def write_manifest(folder: Path, batch: Batch, extra: dict | None = None) -> None:
    rows = manifest_rows(batch)
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
    for sha, path in match_label_files(folder, batch).items():
        try:
            text = path.read_text(encoding="utf-8")
            boxes = parse_yolo_label(text, n_classes, str(path))
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(sha, str(path), str(exc)))
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

    def push(self, batch: Batch) -> None:
        target = self.folder(batch)
        if (target / "manifest.json").exists():
            existing = json.loads((target / "manifest.json").read_text())
            if [r["sha256"] for r in existing["images"]] == [i.sha256 for i in batch.items]:
                return  # already staged; never touch labels/ that annotators may be filling
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

    def _skipped(self, batch: Batch) -> set[str]:
        path = self.folder(batch) / "skipped.txt"
        if not path.exists():
            return set()
        names = {line.strip() for line in path.read_text().splitlines() if line.strip()}
        return {i.sha256 for i in batch.items if i.staged_name in names or Path(i.staged_name).stem in names}

    def progress(self, batch: Batch) -> AnnotationProgress:
        done = set(match_label_files(self.folder(batch) / "labels", batch))
        skipped = self._skipped(batch) - done
        return AnnotationProgress(total=len(batch.items), done=len(done) + len(skipped), skipped=len(skipped))

    def pull(self, batch: Batch) -> PullResult:
        result = read_labels(self.folder(batch) / "labels", batch)
        labeled = {a.sha256 for a in result.labels}
        skipped = tuple(AnnotatedImage(sha, "skipped", source="skipped.txt")
                        for sha in sorted(self._skipped(batch) - labeled))
        return PullResult(result.labels + skipped, result.problems)
