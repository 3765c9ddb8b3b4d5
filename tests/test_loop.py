"""The loop of rounds on a real Ultralytics YOLO (from yolo11n.yaml, imgsz 64, 1 epoch): end to end, resumable,
crash-safe. The oracle (the synthetic dataset's ground truth) stands in for the annotators."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from labelwise.loop import Workspace
from labelwise.pool import label_path_for, read_yolo_label
from labelwise.synthetic import ScenarioSpec, generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="session")
def scenes(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scenes") / "dataset"
    generate(root, ScenarioSpec(n_train=96, n_val=16, image_size=64, seed=3))
    return root


def make_workspace(root: Path, scenes: Path, **settings) -> Workspace:
    base = dict(model="yolo11n.yaml", imgsz=64, train={"epochs": 1, "batch": 8},
                budget={"per_round": 8, "initial": 8}, stopping={"rule": "none"})
    base.update(settings)
    ws = Workspace.create(root, images=[scenes / "train" / "images"], data_yaml=scenes / "data.yaml", **base)
    ws.ingest_sources(progress=False)
    return ws


def oracle_boxes(image_path: Path) -> list[tuple]:
    return [tuple(b) for b in read_yolo_label(label_path_for(image_path), 6)]


def test_run_with_oracle_goes_round_by_round_and_keeps_every_label(tmp_path, scenes):
    ws = make_workspace(tmp_path / "ws", scenes)
    seen = []
    reason = ws.run(oracle=scenes / "train" / "labels", rounds=3, on_round=seen.append)
    assert reason == "3 round(s) done"
    assert [s.round for s in seen] == [1, 2, 3]
    rounds = ws.store.rounds()
    assert [r.step for r in rounds] == ["done", "done", "done"]
    assert rounds[0].model_hash is None and "cold start" in ws.store.selection(1)[0]["reason"]
    assert rounds[1].n_labeled == 8 and rounds[2].n_labeled == 16
    assert all(0.0 <= r.map50 <= 1.0 for r in rounds[1:])
    assert set(rounds[1].per_class_ap50) == set(ws.config.classes)
    assert ws.store.counts()["pool_labeled"] == 24
    # every label in the store is exactly the oracle's, to 1e-6
    for image, boxes in ws.store.labels("pool"):
        expected = oracle_boxes(image.path)
        assert len(boxes) == len(expected)
        for got, want in zip(boxes, expected):
            assert got[0] == want[0] and all(abs(a - b) < 1e-6 for a, b in zip(got[1:], want[1:]))
    # later rounds rank by the model: components and reasons are stored per pick
    picks = ws.store.selection(2)
    assert len(picks) == 8 and all(p["reason"] and p["components"] for p in picks)
    assert [p["rank"] for p in picks] == list(range(1, 9))
    # the second round warm-started from the first round's weights
    assert rounds[2].model_path != rounds[1].model_path
    # the model's agreement with the previous round is recorded for the stabilizing-predictions rule
    assert rounds[2].agreement is not None and 0.0 <= rounds[2].agreement <= 1.0


def test_scoring_is_cached_by_image_model_and_size(tmp_path, scenes):
    ws = make_workspace(tmp_path / "ws", scenes)
    ws.run(oracle=scenes / "train" / "labels", rounds=1)
    ws.train()
    pool = len(ws.store.images(split="pool"))
    assert ws.score() == pool
    current = ws.store.current_round()
    assert ws._score_images(Path(current.model_path), current.model_hash, progress=False) == 0
    assert len(ws.store.scored_shas(current.model_hash, 64)) == pool
    # the full class-score vector of every kept box is stored, not only the top score
    det = ws.store.detections(ws.store.images(split="pool")[0].sha256, current.model_hash, 64)
    assert det.class_scores.shape[1] == len(ws.config.classes)
    assert det.embedding.shape == (448,) and det.box_features.shape[0] == det.boxes.shape[0]


def test_export_stages_folder_with_manifest_and_partial_imports_complete_later(tmp_path, scenes):
    ws = make_workspace(tmp_path / "ws", scenes, budget={"per_round": 6, "initial": 6})
    ws.run(oracle=scenes / "train" / "labels", rounds=1)
    ws.train()
    ws.score()
    ws.select()
    folder = ws.export()
    import json

    manifest = json.loads((folder / "manifest.json").read_text())
    assert len(manifest["images"]) == 6 and (folder / "manifest.csv").exists()
    assert all("score_" in " ".join(row) for row in manifest["images"])
    staged = sorted((folder / "images").iterdir())
    assert len(staged) == 6
    # the annotator labels three images now and three later
    batch = ws.batch()
    first, second = batch.items[:3], batch.items[3:]
    part1, part2 = tmp_path / "part1", tmp_path / "part2"
    for part, items in ((part1, first), (part2, second)):
        part.mkdir()
        for item in items:
            (part / f"{Path(item.staged_name).stem}.txt").write_text(label_path_for(item.path).read_text())
    history_before = ws.store.label_history_count()
    r1 = ws.import_labels(part1)
    assert (r1.imported, r1.pending, r1.complete) == (3, 3, False)
    assert ws.status().step == "annotate"
    r2 = ws.import_labels(part1)  # importing the same files again changes nothing
    assert r2.imported == 0
    r3 = ws.import_labels(part2)
    assert r3.complete and ws.store.current_round().step == "done"
    assert ws.store.label_history_count() == history_before + 6  # one version per image, none repeated


def _cli(ws: Path, oracle: Path, rounds: int, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "LABELWISE_CRASH_AT": crash_at or ""}
    return subprocess.run(
        [sys.executable, "-m", "labelwise", "run", "-w", str(ws), "--oracle", str(oracle), "--rounds", str(rounds)],
        env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.parametrize("crash_at", ["after_train", "mid_score", "before_save_selection", "after_push",
                                      "mid_import"])
def test_kill_9_at_any_step_then_rerun_loses_nothing(tmp_path, scenes, crash_at):
    oracle = scenes / "train" / "labels"
    ws = make_workspace(tmp_path / "ws", scenes, budget={"per_round": 8, "initial": 8},
                        score={"batch": 8})
    ws.run(oracle=oracle, rounds=1)  # the random seed round: now there is something to train on
    ws.store.close()
    crashed = _cli(tmp_path / "ws", oracle, rounds=1, crash_at=crash_at)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    ws = Workspace(tmp_path / "ws")
    labeled_before = {img.sha256 for img, _ in ws.store.labels("pool")}
    if crash_at == "mid_score":
        current = ws.store.current_round()
        already = len(ws.store.scored_shas(current.model_hash, 64))
        assert 0 < already < len(ws.store.images(split="pool"))
        # resuming scores only the images the killed run had not committed: none twice
        assert ws.score() == len(ws.store.images(split="pool")) - already
    ws.store.close()
    resumed = _cli(tmp_path / "ws", oracle, rounds=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ws = Workspace(tmp_path / "ws")
    labeled_after = {img.sha256 for img, _ in ws.store.labels("pool")}
    assert labeled_before <= labeled_after  # no label lost
    assert len(labeled_after) == 16
    rounds = ws.store.rounds()
    assert [r.step for r in rounds] == ["done", "done"]
    assert all(p["outcome"] == "labeled" for p in ws.store.selection(2))
    for image, boxes in ws.store.labels("pool"):
        assert [b[0] for b in boxes] == [b[0] for b in oracle_boxes(image.path)]
    with sqlite3.connect(tmp_path / "ws" / "labelwise.db") as c:
        assert c.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_real_kill_9_during_training_resumes(tmp_path, scenes):
    oracle = scenes / "train" / "labels"
    ws = make_workspace(tmp_path / "ws", scenes, train={"epochs": 30, "batch": 8})
    ws.run(oracle=oracle, rounds=1)
    ws.store.close()
    proc = subprocess.Popen([sys.executable, "-m", "labelwise", "run", "-w", str(tmp_path / "ws"), "--oracle",
                             str(oracle), "--rounds", "1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    train_dir = tmp_path / "ws" / "rounds" / "r002" / "train"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (train_dir / "weights" / "last.pt").exists():
        time.sleep(0.5)
    assert (train_dir / "weights" / "last.pt").exists(), "training never got going"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    ws = Workspace(tmp_path / "ws")
    assert ws.store.current_round().step == "train"
    ws.config.train.epochs = 1  # the retry need not be long
    from labelwise.config import save_config

    save_config(ws.root, ws.config)
    ws.store.close()
    resumed = _cli(tmp_path / "ws", oracle, rounds=1)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    ws = Workspace(tmp_path / "ws")
    assert [r.step for r in ws.store.rounds()] == ["done", "done"]
    assert ws.store.counts()["pool_labeled"] == 16


def test_unreadable_model_gives_an_offline_hint(tmp_path, scenes):
    from labelwise.config import save_config
    from labelwise.detectors.base import DetectorError

    # offline, a checkpoint that is not here is refused when the workspace is created, before anything is written
    with pytest.raises(DetectorError, match="yolo11n.yaml"):
        make_workspace(tmp_path / "ws0", scenes, model="yolo11n.pt")
    assert not (tmp_path / "ws0").exists()

    def named_later(root: Path, **settings) -> Workspace:  # labelwise.yaml edited to name it after init
        ws = make_workspace(root, scenes, **settings)
        ws.config.model = "yolo11n.pt"
        save_config(ws.root, ws.config)
        return ws

    # the default cold start embeds the pool with the checkpoint, so offline it fails at the first selection
    ws = named_later(tmp_path / "ws")
    with pytest.raises(DetectorError, match="yolo11n.yaml"):
        ws.run(oracle=scenes / "train" / "labels", rounds=1)
    # a random cold start needs no model; the training then fails the same way
    ws = named_later(tmp_path / "ws2", strategy={"name": "hybrid", "cold_start": "random"})
    ws.run(oracle=scenes / "train" / "labels", rounds=1)
    with pytest.raises(DetectorError, match="yolo11n.yaml"):
        ws.train()
