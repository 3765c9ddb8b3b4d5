"""The folder backend's outcomes: accepted / rejected / skipped / pending per image, held images, retire."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from PIL import Image

from labelwise.annotation.base import AnnotationBackend, Batch, BatchItem
from labelwise.annotation.folder import FolderBackend

CLASSES = ("fish", "shark")


def make_batch(root: Path, n: int = 5) -> Batch:
    items = []
    for rank in range(1, n + 1):
        path = root / f"img {rank}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.frombytes("RGB", (32, 24), os.urandom(32 * 24 * 3)).save(path)
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        items.append(BatchItem(rank, sha, path, 32, 24, rank, 1 / rank, {}, "", ((0, 0.5, 0.5, 0.2, 0.2, 0.9),)))
    return Batch(1, "r1-cafe", CLASSES, tuple(items))


def test_outcomes_problems_and_held(tmp_path):
    batch = make_batch(tmp_path / "pool")
    be = FolderBackend(tmp_path / "annotation")
    assert isinstance(be, AnnotationBackend)
    report = be.push(batch)
    assert report.sent == 5 and be.push(batch).already_there == 5
    folder = be.folder(batch)
    a, b, c, d, e = batch.items
    (folder / "labels" / f"{Path(a.staged_name).stem}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    (folder / "labels" / f"{Path(b.staged_name).stem}.txt").write_text("0 0.5 0.5 0.2\n")  # malformed
    (folder / "skipped.txt").write_text(f"{c.staged_name}\n{b.staged_name}\n")
    result = be.pull(batch)
    status = {o.sha256: o.status for o in result.tasks}
    assert status == {a.sha256: "accepted", b.sha256: "rejected", c.sha256: "skipped",
                      d.sha256: "pending", e.sha256: "pending"}
    (problem,) = result.problems
    assert problem.sha256 == b.sha256 and problem.image == b.staged_name and ":1:" in str(problem)
    assert result.held == (b.sha256,)
    prog = be.progress(batch)
    assert (prog.accepted, prog.rejected, prog.skipped, prog.pending, prog.done) == (1, 1, 1, 2, 2)


def test_retire_removes_unlabeled_staged_images(tmp_path):
    batch = make_batch(tmp_path / "pool")
    be = FolderBackend(tmp_path / "annotation")
    be.push(batch)
    folder = be.folder(batch)
    a, b, c, d, e = batch.items
    (folder / "labels" / f"{Path(a.staged_name).stem}.txt").write_text("")
    (folder / "skipped.txt").write_text(f"{b.staged_name}\n")
    report = be.retire(batch, keep={c.sha256})
    assert set(report.removed) == {d.sha256, e.sha256} and set(report.kept) == {a.sha256, b.sha256, c.sha256}
    assert not (folder / "images" / d.staged_name).exists() and (folder / "images" / c.staged_name).exists()
    assert set((folder / "retired.txt").read_text().splitlines()) == {d.staged_name, e.staged_name}
    prog = be.progress(batch)
    assert (prog.total, prog.accepted, prog.skipped, prog.pending) == (3, 1, 1, 1)
    assert be.push(batch).sent == 0  # staged once: retire is not undone by a push


def test_waiting_does_not_count_rejected_images_as_done(tmp_path):
    from labelwise.annotation.waiting import wait_until_done

    batch = make_batch(tmp_path / "pool", n=2)
    be = FolderBackend(tmp_path / "annotation")
    be.push(batch)
    labels = be.folder(batch) / "labels"
    a, b = batch.items
    (labels / f"{Path(a.staged_name).stem}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    (labels / f"{Path(b.staged_name).stem}.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # unknown class: rejected
    assert not wait_until_done(be, batch, timeout=0.0, show=False)
    (labels / f"{Path(b.staged_name).stem}.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    assert wait_until_done(be, batch, timeout=0.0, show=False)
