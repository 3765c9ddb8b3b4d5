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
    (tmp_path / "empty").mkdir()
    Workspace.create(tmp_path / "ws", images=[tmp_path / "empty"], classes=["a"], val_fraction=0.0,
                     model="yolo11n.yaml").ingest_sources(progress=False)
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
    refused = _cli("select", "-w", str(tmp_path / "ws"))  # no command works on a half-made pool
    assert refused.returncode == 2 and "half-made" in refused.stderr and "labelwise init" in refused.stderr
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


# -- 4. without --val, init reserves a random validation sample -------------------------------------------------------


class _FakeDetector:
    """Trains in no time (a weights file, a fixed mAP50) and scores with boxes and embeddings drawn from the hash;
    keeps every TrainRequest."""

    def __init__(self):
        self.trained = []

    def train(self, request):
        from labelwise.detectors.base import TrainResult

        self.trained.append(request)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        (request.out_dir / "best.pt").write_text(f"{request.out_dir}")
        return TrainResult(request.out_dir / "best.pt", 0.5, 0.3, {"a": 0.5}, 0.01)

    def score(self, weights, images, *, imgsz, conf, iou, batch, device, flip=False, max_det=100, **kwargs):
        from labelwise.detections import ImageDetections

        for sha, _path in images:
            rng = np.random.default_rng(int(sha[:8], 16))
            xy = rng.uniform(0, 16, (1, 2))
            boxes = np.concatenate([xy, xy + 8], axis=1).astype(np.float32)
            yield sha, ImageDetections(boxes, rng.uniform(0.3, 0.9, (1, 1)).astype(np.float32),
                                       rng.normal(size=(1, 8)).astype(np.float16),
                                       rng.normal(size=16).astype(np.float32), 0.9, 32, 32)


def _reserve_workspace(root: Path, images: Path, **settings) -> Workspace:
    base = dict(classes=["a"], model="yolo11n.yaml", budget={"per_round": 5, "initial": 5},
                stopping={"rule": "none"}, strategy={"name": "random"})
    Workspace.create(root, images=[images], **{**base, **settings}).ingest_sources(progress=False)
    return Workspace(root, detector=_FakeDetector())


def test_init_without_val_reserves_a_random_validation_sample_sent_with_the_first_batch(tmp_path):
    images = _images(tmp_path / "d", 80)
    ws = _reserve_workspace(tmp_path / "ws", images)
    val = {i.id for i in ws.store.images(split="val")}
    assert len(val) == 30 and ws.store.counts()["val_unlabeled"] == 30  # at least 30; a pool of 80 keeps 50
    record = ws.store.kv_get("validation", "reserve")
    assert record["seed"] == 0 and record["reserved"] == 30 and sorted(record["image_ids"]) == sorted(val)
    # seeded, and by content: another workspace over the same pool reserves the same images
    other = _reserve_workspace(tmp_path / "ws2", images)
    assert {i.sha256 for i in other.store.images(split="val")} == {i.sha256 for i in ws.store.images(split="val")}

    oracle = images.parent / "labels"
    assert ws.run(oracle=oracle, rounds=1) == "1 round(s) done"
    first = ws.store.selection(1)
    picked = [r for r in first if r["image_id"] not in val]
    assert len(picked) == 5 and {r["image_id"] for r in first} - {r["image_id"] for r in picked} == val
    assert all("validation" in r["reason"] for r in first if r["image_id"] in val)
    exported = ws.root / "annotation" / "round-001" / "images"
    assert len(list(exported.iterdir())) == 35  # the annotators got the reserve with the first batch
    assert ws.store.counts()["val_labeled"] == 30 and ws.store.counts()["pool_labeled"] == 5

    # round 2 trains (no dead end), validates on the reserve, never trains on it; later batches never hold it
    assert ws.run(oracle=oracle, rounds=2) == "2 round(s) done"
    request = ws.detector.trained[0]
    data = request.data_yaml.parent
    shas = {i.id: i.sha256[:16] for i in ws.store.images()}
    train_names = {p.stem for p in (data / "images" / "train").iterdir()}
    val_names = {p.stem for p in (data / "images" / "val").iterdir()}
    assert val_names == {shas[i] for i in val} and not train_names & val_names and len(train_names) == 5
    for r in (2, 3):
        assert not {row["image_id"] for row in ws.store.selection(r)} & val
        assert len(ws.store.selection(r)) == 5
    assert {i.id for i in ws.store.images(split="val")} == val  # nothing moved between rounds
    assert all(len({p.stem for p in (req.data_yaml.parent / "images" / "val").iterdir()}) == 30
               for req in ws.detector.trained)


def test_the_reserve_leaves_a_pool_and_tops_up_what_labeled_sources_hold_out(tmp_path):
    tiny = _reserve_workspace(tmp_path / "tiny", _images(tmp_path / "t", 10))
    assert tiny.store.counts()["val_unlabeled"] == 0  # the first batch (5) and one round (5) need all 10
    small = _reserve_workspace(tmp_path / "small", _images(tmp_path / "s", 13))
    assert small.store.counts()["val_unlabeled"] == 3
    mid = _reserve_workspace(tmp_path / "mid", _images(tmp_path / "m", 40))
    assert mid.store.counts()["val_unlabeled"] == 20  # at most half the pool
    sized = _reserve_workspace(tmp_path / "sized", _images(tmp_path / "z", 40),
                               budget={"per_round": 5, "initial": 5, "val": 12})
    assert sized.store.counts()["val_unlabeled"] == 12  # budget.val
    # labeled seeds held out by hash count towards the 30
    seeds = _images(tmp_path / "seeds", 20, seed=7)
    seeded = _reserve_workspace(tmp_path / "seeded", _images(tmp_path / "p", 80, seed=8), labeled=[seeds],
                                val_fraction=0.25)
    held_out = seeded.store.counts()["val_labeled"]
    assert 0 < held_out < 20 and seeded.store.counts()["val_unlabeled"] == 30 - held_out
    # a user-given val split: nothing reserved
    val_dir = _images(tmp_path / "v", 4, seed=9)
    given = _reserve_workspace(tmp_path / "given", _images(tmp_path / "g", 80, seed=3), val=val_dir)
    assert given.store.counts()["val_unlabeled"] == 0 and given.store.counts()["val_labeled"] == 4


# -- 6. the default model is the pretrained checkpoint; offline, init fails at once and creates nothing -------------


OFFLINE = ("model checkpoint 'yolo26n.pt' is not on this machine and cannot be downloaded: this machine is offline. "
           "To proceed: put the .pt file here and pass `--model PATH`")


def _offline(monkeypatch) -> list[str]:
    from labelwise.detectors import ultralytics
    from labelwise.detectors.base import ModelUnavailableError

    asked: list[str] = []

    def check(name, weights_dir=None):
        asked.append(name)
        if not str(name).endswith((".yaml", ".yml")):
            raise ModelUnavailableError(OFFLINE)

    monkeypatch.setattr(ultralytics, "check_model_available", check)
    return asked


def test_init_defaults_to_the_pretrained_checkpoint(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from labelwise.cli import app
    from labelwise.detectors import ultralytics

    asked: list[str] = []  # online: every model is available
    monkeypatch.setattr(ultralytics, "check_model_available", lambda name, weights_dir=None: asked.append(name))
    images = _images(tmp_path / "d", 3)
    result = CliRunner().invoke(app, ["init", str(tmp_path / "ws"), "--images", str(images), "--classes", "a"])
    assert result.exit_code == 0, result.output
    assert ultralytics.DEFAULT_MODEL.endswith(".pt")  # a pretrained checkpoint, not a YAML trained from scratch
    assert Workspace(tmp_path / "ws").config.model == ultralytics.DEFAULT_MODEL
    assert set(asked) == {ultralytics.DEFAULT_MODEL}


def test_init_offline_fails_at_once_with_the_detectors_advice_and_creates_nothing(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from labelwise.cli import app
    from labelwise.detectors.base import ModelUnavailableError

    _offline(monkeypatch)
    images = _images(tmp_path / "d", 3)
    result = CliRunner().invoke(app, ["init", str(tmp_path / "ws"), "--images", str(images), "--classes", "a"])
    assert result.exit_code == 2
    assert "offline" in " ".join(result.output.split()) and "--model PATH" in result.output
    assert not (tmp_path / "ws").exists()
    (tmp_path / "empty").mkdir()  # a folder made beforehand stays as it was
    assert CliRunner().invoke(app, ["init", str(tmp_path / "empty"), "--images", str(images), "--classes", "a"
                                    ]).exit_code == 2
    assert list((tmp_path / "empty").iterdir()) == []
    with pytest.raises(ModelUnavailableError, match="offline"):  # the Python API too
        Workspace.create(tmp_path / "api", images=[images], classes=["a"])
    assert not (tmp_path / "api").exists()
    # a model YAML needs nothing from the network
    ok = CliRunner().invoke(app, ["init", str(tmp_path / "ws"), "--images", str(images), "--classes", "a",
                                  "--model", "yolo11n.yaml"])
    assert ok.exit_code == 0, ok.output
