"""Adding images and labels, and creating a workspace: crash-safe, and nothing a label file said is lost or leaks
back into the pool. No detector here; a kill is a real SIGKILL of a `labelwise` process (crash_point)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.loop import Workspace


def _images(folder: Path, n: int, seed: int = 0, label: str | None = "0 0.5 0.5 0.2 0.2\n") -> Path:
    """`n` random PNGs under folder/images, each with `label` under folder/labels (no label file when None)."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / "images" / f"{i:03d}.png")
        if label is not None:
            (folder / "labels" / f"{i:03d}.txt").write_text(label)
    return folder / "images"


def _cli(*args: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABELWISE_CRASH_AT": crash_at or ""}
    return subprocess.run([sys.executable, "-m", "labelwise", *args], env=env, capture_output=True, text=True,
                          timeout=300)


# -- 1. an image and its label arrive together ---------------------------------------------------------------------


def test_a_kill_between_the_image_and_its_label_loses_no_label(tmp_path):
    images = _images(tmp_path / "seed", 6)
    Workspace.create(tmp_path / "ws", images=[images], classes=["a"], val_fraction=0.0, model="yolo11n.yaml")
    add = ("add", str(images), "-w", str(tmp_path / "ws"), "--labeled")
    crashed = _cli(*add, crash_at="add_before_label")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    resumed = _cli(*add)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ws = Workspace(tmp_path / "ws")
    counts = ws.store.counts()
    assert (counts["pool_labeled"], counts["pool_unlabeled"]) == (6, 0)
    assert all(boxes == [(0, 0.5, 0.5, 0.2, 0.2)] for _, boxes in ws.store.labels("pool"))


# -- 2. a rejected label keeps its image out of the pool ------------------------------------------------------------


def _mixed_folder(folder: Path) -> Path:
    """10 images: 0-3 with a label that is refused, 4-6 with none, 7-9 with a good one."""
    images = _images(folder, 10, seed=5)
    for i in range(4):
        (folder / "labels" / f"{i:03d}.txt").write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 1
    for i in range(4, 7):
        (folder / "labels" / f"{i:03d}.txt").unlink()
    return images


def test_an_image_whose_label_was_rejected_stays_quarantined_when_its_folder_is_also_a_pool_source(tmp_path):
    images = _mixed_folder(tmp_path / "d")
    ws = Workspace.create(tmp_path / "ws", images=[images], classes=["a"], labeled=[images], val_fraction=0.0,
                          model="yolo11n.yaml")
    report = ws.ingest_sources(progress=False)
    rejected = {str(images / f"{i:03d}.png") for i in range(4)}
    assert {p for p, _ in report.quarantined} == rejected
    status = ws.status()
    assert status.counts["quarantined"] == 4 and {p for p, _ in status.quarantined} == rejected
    assert all("label rejected" in reason and "unknown class id" in reason for _, reason in status.quarantined)
    counts = ws.store.counts()
    assert (counts["pool_labeled"], counts["pool_unlabeled"]) == (3, 3)
    assert not {str(i.path) for i in ws.store.images()} & rejected  # nothing that could go to annotators
    # seen again, however often and as whatever source, they stay where they are
    ws.add([images], progress=False)
    ws.ingest_sources(progress=False)
    assert ws.store.counts()["quarantined"] == 4 and not {str(i.path) for i in ws.store.images()} & rejected


def test_a_copy_of_an_image_with_a_rejected_label_is_held_back_until_the_label_is_fixed(tmp_path):
    import shutil

    images = _mixed_folder(tmp_path / "d")
    ws = Workspace.create(tmp_path / "ws", images=[images], classes=["a"], labeled=[images], val_fraction=0.0,
                          model="yolo11n.yaml")
    ws.ingest_sources(progress=False)
    copy = tmp_path / "more" / "copy.png"
    copy.parent.mkdir()
    shutil.copyfile(images / "000.png", copy)
    report = ws.add([copy.parent], progress=False)
    assert report.added == 0 and [p for p, _ in report.quarantined] == [str(copy)]
    assert "same image as" in report.quarantined[0][1] and "000.png" in report.quarantined[0][1]
    # the label is fixed: a labeled pass takes the image in with it, and its copy is a name of it, not quarantined
    (images.parent / "labels" / "000.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    assert ws.add([images], labeled=True, progress=False).labeled == 1
    assert ws.add([copy.parent], progress=False).duplicates
    assert {p for p, _ in ws.store.quarantined()} == {str(images / f"{i:03d}.png") for i in (1, 2, 3)}


def test_a_store_from_before_keeps_its_rejected_labels_apart(tmp_path):
    import sqlite3

    from labelwise.store import Store

    Store(tmp_path / "s.db").close()
    with sqlite3.connect(tmp_path / "s.db") as c:  # the quarantine table as schema 2 had it
        c.execute("DROP INDEX quarantine_sha")
        c.execute("ALTER TABLE quarantine DROP COLUMN sha256")
        c.execute("ALTER TABLE quarantine DROP COLUMN label_rejected")
        c.execute("INSERT INTO quarantine VALUES ('/d/a.png', 'label rejected: a.txt:1: bad', 'now')")
        c.execute("INSERT INTO quarantine VALUES ('/d/b.png', '/d/b.png: corrupt or unreadable image', 'now')")
    store = Store(tmp_path / "s.db")
    assert store.rejected_label(path="/d/a.png") == "/d/a.png" and store.rejected_label(path="/d/b.png") is None


# -- 3. an init stopped half-way is continued by running it again -----------------------------------------------------


def _init(ws: Path, images: Path, *extra: str, crash_at: str | None = None) -> subprocess.CompletedProcess:
    return _cli("init", str(ws), "--images", str(images), "--labeled", str(images), "--classes", "a",
                "--model", "yolo11n.yaml", *extra, crash_at=crash_at)


@pytest.mark.parametrize("crash_at", ["add_before_label", "init_before_done"])
def test_init_killed_half_way_is_continued_by_the_same_init(tmp_path, crash_at):
    from labelwise.loop import init_state

    images = _images(tmp_path / "d", 6)
    crashed = _init(tmp_path / "ws", images, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert init_state(tmp_path / "ws") == "started"
    resumed = _init(tmp_path / "ws", images)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-2000:]
    assert "continuing" in resumed.stdout
    assert init_state(tmp_path / "ws") == "done"
    counts = Workspace(tmp_path / "ws").store.counts()
    assert counts["pool_labeled"] + counts["val_labeled"] == 6 and counts["pool_unlabeled"] == 0
    again = _init(tmp_path / "ws", images)  # a finished workspace is not made twice
    assert again.returncode == 2 and "already a labelwise workspace" in again.stderr


def test_init_killed_half_way_then_run_with_other_settings_starts_over(tmp_path):
    first, second = _images(tmp_path / "d1", 4, seed=1), _images(tmp_path / "d2", 3, seed=2)
    assert _init(tmp_path / "ws", first, crash_at="init_before_done").returncode == -signal.SIGKILL
    resumed = _init(tmp_path / "ws", second)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ws = Workspace(tmp_path / "ws")
    assert {i.path.parent for i in ws.store.images()} == {second}  # nothing left from the first attempt
    assert ws.config.images == [str(second)]
