"""The pool: content-hash identity, validation and quarantine of bad files and labels (no training here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.config import ConfigError
from labelwise.loop import Workspace
from labelwise.pool import parse_yolo_label


def _image(path: Path, seed: int, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def test_same_stem_in_two_folders_are_two_images_and_same_bytes_are_one(tmp_path):
    a = _image(tmp_path / "pool" / "cam1" / "frame.png", 1)
    b = _image(tmp_path / "pool" / "cam2" / "frame.png", 2)
    copy = tmp_path / "pool" / "cam3" / "other_name.png"
    copy.parent.mkdir(parents=True)
    shutil.copyfile(a, copy)
    ws = Workspace.create(tmp_path / "ws", images=[tmp_path / "pool"], classes=["cat", "dog"], model="yolo11n.yaml")
    report = ws.ingest_sources(progress=False)
    assert report.added == 2
    assert [Path(p).name for p, _ in report.duplicates] == ["other_name.png"]
    shas = {img.sha256 for img in ws.store.images()}
    assert len(shas) == 2
    assert {img.path for img in ws.store.images()} == {a, b}
    assert ws.store.counts()["duplicate_paths"] == 1


def test_adding_again_is_idempotent_and_pool_can_grow(tmp_path):
    _image(tmp_path / "pool" / "a.png", 1)
    ws = Workspace.create(tmp_path / "ws", images=[tmp_path / "pool"], classes=["x"], model="yolo11n.yaml")
    ws.ingest_sources(progress=False)
    assert ws.add([tmp_path / "pool"], progress=False).added == 0
    _image(tmp_path / "more" / "b.png", 2)
    assert ws.add([tmp_path / "more"], progress=False).added == 1
    assert str((tmp_path / "more").absolute()) in Workspace(tmp_path / "ws").config.images
    assert ws.store.counts()["pool_unlabeled"] == 2


def test_bad_files_are_quarantined_with_a_message_naming_the_file(tmp_path):
    pool = tmp_path / "data" / "images"
    _image(pool / "good.png", 1)
    (pool / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (pool / "notes.bin").write_bytes(b"\x00\x01")
    _image(pool / "bad_line.png", 2)
    _image(pool / "bad_class.png", 3)
    _image(pool / "outside.png", 4)
    _image(pool / "empty.png", 5)
    _image(pool / "nolabel.png", 6)
    labels = tmp_path / "data" / "labels"
    labels.mkdir(parents=True)
    (labels / "good.txt").write_text("0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n")
    (labels / "bad_line.txt").write_text("0 0.5 0.5 0.2 0.2\n0 0.5 0.5 0.2\n")
    (labels / "bad_class.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    (labels / "outside.txt").write_text("0 1.2 0.5 0.2 0.2\n")
    (labels / "empty.txt").write_text("")
    ws = Workspace.create(tmp_path / "ws", images=[pool], classes=["a", "b"], model="yolo11n.yaml",
                          labeled=[pool], val_fraction=0.0)
    report = ws.add([pool], labeled=True, progress=False)
    reasons = dict(ws.store.quarantined())
    assert set(Path(p).name for p in reasons) == {"truncated.jpg", "notes.bin", "bad_line.png", "bad_class.png",
                                                   "outside.png"}
    assert "truncated.jpg" in reasons[str(pool / "truncated.jpg")] and "corrupt" in reasons[str(pool / "truncated.jpg")]
    assert "bad_line.txt:2" in reasons[str(pool / "bad_line.png")]
    assert "4 fields" in reasons[str(pool / "bad_line.png")]
    assert "unknown class id '7'" in reasons[str(pool / "bad_class.png")]
    assert "bad_class.txt:1" in reasons[str(pool / "bad_class.png")]
    assert "[0, 1]" in reasons[str(pool / "outside.png")]
    # empty label file = a valid image with no objects; a missing label file = unlabeled
    assert report.labeled == 2
    empty = next(i for i in ws.store.images() if i.path.name == "empty.png")
    assert ws.store.label(empty.id) == []
    nolabel = next(i for i in ws.store.images() if i.path.name == "nolabel.png")
    assert nolabel.state == "unlabeled"
    good = next(i for i in ws.store.images() if i.path.name == "good.png")
    assert ws.store.label(good.id) == [(0, 0.5, 0.5, 0.2, 0.2), (1, 0.3, 0.3, 0.1, 0.1)]
    # status lists what is quarantined and why
    status = ws.status()
    assert len(status.quarantined) == 5 and status.counts["quarantined"] == 5


@pytest.mark.parametrize("text, fragment", [
    ("0 0.5 0.5 0.2", "4 fields"),
    ("a 0.5 0.5 0.2 0.2", "not numbers"),
    ("0.5 0.5 0.5 0.2 0.2", "unknown class id"),
    ("-1 0.5 0.5 0.2 0.2", "unknown class id"),
    ("0 0.5 0.5 0 0.2", "w, h > 0"),
    ("0 0.95 0.5 0.2 0.2", "outside the image"),
])
def test_label_line_errors_name_file_and_line(text, fragment):
    with pytest.raises(ValueError) as info:
        parse_yolo_label("0 0.5 0.5 0.1 0.1\n" + text + "\n", 2, "labels/x.txt")
    assert fragment in str(info.value)
    assert str(info.value).startswith("labels/x.txt:2:")


def test_labeled_images_hold_out_a_fixed_validation_part_by_hash(tmp_path):
    images = tmp_path / "d" / "images"
    labels = tmp_path / "d" / "labels"
    labels.mkdir(parents=True)
    for i in range(40):
        _image(images / f"{i}.png", i)
        (labels / f"{i}.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    ws = Workspace.create(tmp_path / "ws", images=[images], classes=["a"], model="yolo11n.yaml",
                          labeled=[images], val_fraction=0.25)
    ws.ingest_sources(progress=False)
    val = {i.sha256 for i in ws.store.images(split="val")}
    assert 3 <= len(val) <= 18  # about a quarter of 40
    # a second workspace over the same files holds out exactly the same images: the split depends on content only
    ws2 = Workspace.create(tmp_path / "ws2", images=[images], classes=["a"], labeled=[images], val_fraction=0.25,
                           model="yolo11n.yaml")
    ws2.ingest_sources(progress=False)
    assert {i.sha256 for i in ws2.store.images(split="val")} == val


def test_config_errors_name_the_key(tmp_path):
    _image(tmp_path / "p" / "a.png", 1)
    with pytest.raises(ConfigError, match="unknown key"):
        Workspace.create(tmp_path / "ws", images=[tmp_path / "p"], classes=["a"], budgett={"per_round": 3})
    with pytest.raises(ConfigError, match="stopping.rule"):
        Workspace.create(tmp_path / "ws2", images=[tmp_path / "p"], classes=["a"], stopping={"rule": "never"})
    with pytest.raises(ConfigError, match="does not exist"):
        Workspace.create(tmp_path / "ws3", images=[tmp_path / "nope"], classes=["a"])
