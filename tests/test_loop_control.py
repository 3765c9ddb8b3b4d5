"""Loop control without a real detector: when `run` stops, what a recorded stop means, and what reaches the
detector. A fake detector trains in microseconds (a weights file and a scripted mAP50) and scores with boxes and
embeddings drawn from the image's hash, so these tests exercise the real state machine, store and selection."""

from __future__ import annotations

import zlib
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
    Score: one or two boxes per image and a 16-d embedding, deterministic per image hash; with memorize=True a
    model's boxes on the images it trained on are its own (as a real model reproduces its labels), so two models
    agree exactly on the images neither trained on and disagree on the rest."""

    def __init__(self, maps: tuple[float, ...] = (0.3, 0.5, 0.6, 0.65, 0.7, 0.72), n_classes: int = 2,
                 memorize: bool = False):
        self.maps, self.n_classes, self.memorize = list(maps), n_classes, memorize
        self.trained_on: dict[str, set[Path]] = {}  # weights -> the images it trained on
        self.trained: list[TrainRequest] = []
        self.scored: list[str] = []
        self.score_kwargs: list[dict] = []

    def train(self, request: TrainRequest) -> TrainResult:
        self.trained.append(request)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        weights = request.out_dir / "best.pt"
        weights.write_text(f"{request.out_dir} {len(self.trained)}")
        train_dir = request.data_yaml.parent / "images" / "train"
        self.trained_on[str(weights)] = {p.resolve() for p in train_dir.iterdir()} if train_dir.exists() else set()
        map50 = self.maps[min(len(self.trained) - 1, len(self.maps) - 1)]
        return TrainResult(weights, map50, map50 / 2, {"a": map50, "b": map50}, 0.01)

    def score(self, weights, images, *, imgsz, conf, iou, batch, device, flip=False, max_det=100, **kwargs):
        self.score_kwargs.append(kwargs)
        for sha, path in images:
            self.scored.append(sha)
            seed = int(sha[:8], 16)
            if self.memorize and Path(path).resolve() in self.trained_on.get(str(weights), ()):
                seed += zlib.crc32(str(weights).encode())  # each model its own boxes there
            rng = np.random.default_rng(seed)
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
                     **{"model": "yolo11n.yaml", **settings}).ingest_sources(progress=False)
    return Workspace(tmp_path / "ws", detector=detector or FakeDetector())


def _force(section, **values) -> None:
    """Set settings without validation: config.py refuses a budget.total below 1 at load, but the loop must be safe
    on its own (an older labelwise.yaml, a caller setting the config in Python)."""
    for key, value in values.items():
        object.__setattr__(section, key, value)


def _rounds_counter():
    done: list[int] = []

    def on_round(summary) -> None:
        done.append(summary.round)
        assert len(done) < 50, "run keeps completing rounds"

    return done, on_round


# -- 1. an empty selection never closes a round ---------------------------------------------------------------------


@pytest.mark.parametrize("total", [0, -5])
def test_run_with_no_label_budget_stops_at_once_and_says_which_setting(tmp_path, scenes, total):
    ws = _workspace(tmp_path, scenes, budget={"per_round": 3})
    _force(ws.config.budget, total=total)
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
    ws = _workspace(tmp_path, scenes, budget={"per_round": 3})
    _force(ws.config.budget, total=0)
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


# -- 2. a stop is not a life sentence -------------------------------------------------------------------------------

PLATEAU = (0.3, 0.5, 0.501, 0.502, 0.503, 0.504, 0.505, 0.506)  # gains 0.2, then 0.001 a round


def _stopping(patience: int) -> dict:
    return {"rule": "min_gain", "min_map_gain": 0.005, "patience": patience}


@pytest.mark.parametrize("patience, trainings", [(1, 3), (2, 4)])
def test_the_gain_rule_waits_the_configured_patience(tmp_path, scenes, patience, trainings):
    detector = FakeDetector(PLATEAU)
    ws = _workspace(tmp_path, scenes, detector, stopping=_stopping(patience))
    reason = ws.run(oracle=scenes[0] / "labels")
    assert reason.startswith("stopping rule 'min_gain'")
    assert len(detector.trained) == trainings  # gains 0.2, 0.001 (stop at patience 1), 0.001 (patience 2)


def test_resume_lifts_the_stop_and_goes_on_from_the_trained_model(tmp_path, scenes):
    detector = FakeDetector(PLATEAU)
    ws = _workspace(tmp_path, scenes, detector, stopping=_stopping(1))
    first = ws.run(oracle=scenes[0] / "labels")
    assert ws.finished() == first and ws.status().step == "finished"
    assert "labelwise resume" in ws.status().message
    stopped_round, labeled = ws.store.current_round().round, ws.store.counts()["pool_labeled"]
    assert ws.run(oracle=scenes[0] / "labels") == first  # without resume a stop holds

    message = ws.resume()
    assert message.startswith("resumed") and first in message and "stop again" not in message
    assert ws.finished() is None
    trainings = len(detector.trained)
    done, on_round = _rounds_counter()
    again = ws.run(oracle=scenes[0] / "labels", on_round=on_round)
    # the stopped round scores with the model it had (no second training on the same labels), selects, is
    # labeled; the next model gains 0.001 again and the rule stops the loop once more
    assert done == [stopped_round]
    assert len(detector.trained) == trainings + 1
    assert ws.store.counts()["pool_labeled"] == labeled + 3
    assert again.startswith("stopping rule 'min_gain'") and ws.finished() == again
    assert ws.resume().startswith("resumed") and Workspace(ws.root).finished() is None
    assert ws.resume() == "the loop was not stopped; nothing to resume"


def test_editing_the_stopping_settings_lifts_the_stop_they_no_longer_justify(tmp_path, scenes):
    detector = FakeDetector(PLATEAU)
    ws = _workspace(tmp_path, scenes, detector, stopping=_stopping(1))
    reason = ws.run(oracle=scenes[0] / "labels")
    assert Workspace(ws.root, detector=detector).finished() == reason  # reopening changes nothing
    config = load_config(ws.root)
    config.budget.per_round = 4  # not a stopping setting: the stop holds
    save_config(ws.root, config)
    assert Workspace(ws.root, detector=detector).finished() == reason
    config.stopping.patience = 3
    save_config(ws.root, config)
    ws = Workspace(ws.root, detector=detector)
    assert ws.finished() is None
    assert ws.status().next_command == "labelwise run" and "settings in labelwise.yaml changed" in \
        ws.status().message
    trainings = len(detector.trained)
    again = ws.run(oracle=scenes[0] / "labels")
    assert again.startswith("stopping rule 'min_gain'") and "3 rounds in a row" in again
    assert len(detector.trained) == trainings + 2  # two more plateau rounds: patience 3 is met


def test_raising_the_budget_lifts_a_budget_stop_and_resume_warns_while_it_holds(tmp_path, scenes):
    ws = _workspace(tmp_path, scenes, budget={"per_round": 3, "initial": 3, "total": 3}, stopping={"rule": "none"})
    reason = ws.run(oracle=scenes[0] / "labels")
    assert reason == "label budget reached (3 of 3 labeled)"
    message = ws.resume()
    assert "label budget reached" in message and "stop again" in message and "labelwise.yaml" in message
    assert ws.run(oracle=scenes[0] / "labels") == reason
    config = load_config(ws.root)
    config.budget.total = 6
    save_config(ws.root, config)
    ws = Workspace(ws.root, detector=ws.detector)
    assert ws.run(oracle=scenes[0] / "labels") == "label budget reached (6 of 6 labeled)"


def test_cli_resume(tmp_path, scenes):
    from typer.testing import CliRunner

    from labelwise.cli import app

    ws = _workspace(tmp_path, scenes, budget={"per_round": 3, "initial": 3, "total": 3}, stopping={"rule": "none"})
    ws.run(oracle=scenes[0] / "labels")
    result = CliRunner().invoke(app, ["resume", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    assert "resumed" in result.output and "label budget reached (3 of 3 labeled)" in result.output
    assert Workspace(ws.root).store.kv_get("loop", "finished") is None


# -- 3. the stabilizing-predictions stop set ------------------------------------------------------------------------


def test_agreement_is_measured_only_on_images_neither_model_trained_on(tmp_path, scenes):
    ws = _workspace(tmp_path, scenes, FakeDetector(memorize=True), stopping={"rule": "none"})
    ws.run(oracle=scenes[0] / "labels", rounds=3)
    agreements = [r.agreement for r in ws.store.rounds() if r.agreement is not None]
    # rounds 2 (first model) has no predecessor; round 3 compares with round 2 on the unlabeled images only,
    # where the fake's models agree exactly: a labeled image in the stop set would pull this below 1
    assert agreements == [1.0]
    current = ws.store.current_round()
    assert ws._agreement_with_previous(current, stop_set_size=5) == 1.0


# -- 4. threads: --threads and labelwise.yaml reach the detector; a busy CPU gets a hint ------------------------------


@pytest.fixture
def detectors_made(monkeypatch) -> list[tuple[int | None, FakeDetector]]:
    """Replace the Ultralytics detector with the fake, recording the `threads` each workspace created it with."""
    import labelwise.detectors.ultralytics as ultralytics_detector

    made: list[tuple[int | None, FakeDetector]] = []

    def make(config_dir, threads=None):
        made.append((threads, FakeDetector()))
        return made[-1][1]

    monkeypatch.setattr(ultralytics_detector, "UltralyticsDetector", make)
    return made


def _cli(*args: str):
    from typer.testing import CliRunner

    from labelwise.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_threads_from_the_command_line_or_labelwise_yaml_reach_the_detector(tmp_path, scenes, detectors_made,
                                                                          monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    ws = _workspace(tmp_path, scenes, threads=2, stopping={"rule": "none"})
    root, oracle = ws.root, scenes[0] / "labels"
    ws.store.close()
    result = _cli("run", "-w", root, "--oracle", oracle, "--rounds", "2", "--threads", "3")
    assert result.exit_code == 0, result.output
    assert [t for t, _ in detectors_made] == [3] and detectors_made[0][1].trained  # round 2 trained on it
    assert "load average" not in result.output
    result = _cli("run", "-w", root, "--oracle", oracle, "--rounds", "1")
    assert result.exit_code == 0, result.output
    assert [t for t, _ in detectors_made] == [3, 2]  # no --threads: labelwise.yaml's `threads: 2`


def test_score_takes_threads_and_hints_when_the_cpu_is_already_busy(tmp_path, scenes, detectors_made, monkeypatch):
    from labelwise.cores import usable_cores

    ws = _workspace(tmp_path, scenes, FakeDetector(), stopping={"rule": "none"})
    ws.run(oracle=scenes[0] / "labels", rounds=1)
    ws.train()  # round 2 waits at its score step
    ws.store.close()
    busy = usable_cores() + 2.5
    monkeypatch.setattr("os.getloadavg", lambda: (busy, 0.0, 0.0))
    result = _cli("score", "-w", ws.root, "--threads", "1")
    assert result.exit_code == 0, result.output
    assert [t for t, _ in detectors_made] == [1] and detectors_made[0][1].scored
    assert f"load average {busy:.1f} on {usable_cores()} usable core" in result.output
    assert "--threads 1" in result.output


def test_simulate_passes_threads_to_every_workspace(tmp_path, detectors_made, monkeypatch):
    monkeypatch.setattr("os.getloadavg", lambda: (0.0, 0.0, 0.0))
    data = tmp_path / "data"
    for split, n, seed in (("train", 16, 3), ("val", 4, 4)):
        part = _scenes(tmp_path / split, n, seed)
        (data / "images").mkdir(parents=True, exist_ok=True)
        (part / "images").rename(data / "images" / split)
        (data / "labels").mkdir(parents=True, exist_ok=True)
        (part / "labels").rename(data / "labels" / split)
    (data / "data.yaml").write_text(f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n  0: a\n  1: b\n")
    result = _cli("simulate", "--data", data / "data.yaml", "--out", tmp_path / "sim", "--strategies", "random",
                  "--seeds", "1", "--initial", "4", "--per-round", "4", "--rounds", "2", "--epochs", "1",
                  "--imgsz", "64", "--quiet", "--threads", "2")
    assert result.exit_code == 0, result.output
    assert detectors_made and {t for t, _ in detectors_made} == {2}
    assert any(d.trained for _, d in detectors_made)
