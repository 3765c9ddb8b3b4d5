"""Loop control without a real detector: when `run` stops, what a recorded stop means, and what reaches the
detector. A fake detector trains in microseconds (a weights file and a scripted mAP50) and scores with boxes and
embeddings drawn from the image's hash, so these tests exercise the real state machine, store and selection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.config import load_config, save_config
from labelwise.detections import ImageDetections
from labelwise.detectors.base import TrainRequest, TrainResult
from labelwise.loop import LoopError, Workspace

pytestmark = pytest.mark.timeout(120)  # a loop that never stops must fail here, not hang the suite


class FakeDetector:
    """Train: writes a distinct weights file, reports the next mAP50 of `maps` (the last one repeats).
    Score: one or two boxes per image and a 16-d embedding, deterministic per image hash."""

    def __init__(self, maps: tuple[float, ...] = (0.3, 0.5, 0.6, 0.65, 0.7, 0.72), n_classes: int = 2):
        self.maps, self.n_classes = list(maps), n_classes
        self.trained: list[TrainRequest] = []
        self.scored: list[str] = []
        self.score_kwargs: list[dict] = []

    def train(self, request: TrainRequest) -> TrainResult:
        self.trained.append(request)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        weights = request.out_dir / "best.pt"
        weights.write_text(f"{request.out_dir} {len(self.trained)}")
        map50 = self.maps[min(len(self.trained) - 1, len(self.maps) - 1)]
        return TrainResult(weights, map50, map50 / 2, {"a": map50, "b": map50}, 0.01)

    def score(self, weights, images, *, imgsz, conf, iou, batch, device, flip=False, max_det=100, **kwargs):
        self.score_kwargs.append(kwargs)
        for sha, _path in images:
            self.scored.append(sha)
            rng = np.random.default_rng(int(sha[:8], 16))
            n = int(rng.integers(1, 3))
            xy = rng.uniform(0, 40, (n, 2))
            boxes = np.concatenate([xy, xy + rng.uniform(5, 20, (n, 2))], axis=1).astype(np.float32)
            scores = rng.uniform(0.3, 0.9, (n, self.n_classes)).astype(np.float32)
            yield sha, ImageDetections(boxes, scores, rng.normal(size=(n, 8)).astype(np.float16),
                                       rng.normal(size=16).astype(np.float32), 0.9, 64, 64)


def _scenes(root: Path, n: int, seed: int) -> Path:
    """`n` random images under root/images with a one-box YOLO label each under root/labels."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir(parents=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i:03d}.png")
        (root / "labels" / f"{i:03d}.txt").write_text(f"{i % 2} 0.5 0.5 0.2 0.3\n")
    return root


@pytest.fixture
def scenes(tmp_path: Path) -> tuple[Path, Path]:
    return _scenes(tmp_path / "pool", 24, 1), _scenes(tmp_path / "val", 4, 2)


def _workspace(tmp_path: Path, scenes, detector=None, **settings) -> Workspace:
    pool, val = scenes
    settings = {"budget": {"per_round": 3, "initial": 3}, "train": {"epochs": 1}, **settings}
    Workspace.create(tmp_path / "ws", images=[pool / "images"], classes=["a", "b"], val=val / "images",
                     **settings).ingest_sources(progress=False)
    return Workspace(tmp_path / "ws", detector=detector or FakeDetector())


def _rounds_counter():
    done: list[int] = []

    def on_round(summary) -> None:
        done.append(summary.round)
        assert len(done) < 50, "run keeps completing rounds"

    return done, on_round


# -- 1. an empty selection never closes a round ---------------------------------------------------------------------


@pytest.mark.parametrize("total", [0, -5])
def test_run_with_no_label_budget_stops_at_once_and_says_which_setting(tmp_path, scenes, total):
    ws = _workspace(tmp_path, scenes, budget={"per_round": 3, "total": total})
    done, on_round = _rounds_counter()
    reason = ws.run(oracle=scenes[0] / "labels", on_round=on_round)
    assert done == []
    assert f"budget.total is {total}" in reason and "labelwise.yaml" in reason
    assert ws.finished() == reason
    assert [r.step for r in ws.store.rounds()] == ["select"]  # the round stays open: nothing was closed empty
    assert ws.store.counts()["pool_labeled"] == 0


def test_run_stops_when_the_budget_is_spent_after_training(tmp_path, scenes):
    detector = FakeDetector()
    ws = _workspace(tmp_path, scenes, detector, budget={"per_round": 3, "initial": 3, "total": 5},
                    stopping={"rule": "none"})
    done, on_round = _rounds_counter()
    reason = ws.run(oracle=scenes[0] / "labels", on_round=on_round)
    assert reason == "label budget reached (5 of 5 labeled)"
    assert done == [1, 2]  # 3 at random, then min(per_round, 5 - 3) = 2
    assert [len(ws.store.selection(r)) for r in (1, 2)] == [3, 2]
    assert len(detector.trained) == 2  # round 3 trained on all 5, then stopped before scoring


def test_select_refuses_an_empty_batch(tmp_path, scenes):
    ws = _workspace(tmp_path, scenes)
    with pytest.raises(LoopError, match="batch size k is 0"):
        ws.select(k=0)
    assert ws.store.selection(1) == [] and ws.store.current_round().step == "select"


def test_select_with_the_budget_spent_names_budget_total(tmp_path, scenes):
    ws = _workspace(tmp_path, scenes, budget={"per_round": 3, "total": 0})
    with pytest.raises(LoopError, match=r"budget is spent \(0 labeled, budget.total 0"):
        ws.select()


def test_an_empty_batch_left_by_an_older_version_is_never_complete_and_run_selects_again(tmp_path, scenes):
    ws = _workspace(tmp_path, scenes)
    ws._open_round()
    ws.store.save_selection(1, [], [], next_step="annotate")  # what the unguarded loop saved for k = 0
    report = ws.import_labels(scenes[0] / "labels")
    assert not report.complete and ws.store.current_round().step == "annotate"
    done, on_round = _rounds_counter()
    ws.run(oracle=scenes[0] / "labels", rounds=1, on_round=on_round)
    assert done == [1] and len(ws.store.selection(1)) == 3
