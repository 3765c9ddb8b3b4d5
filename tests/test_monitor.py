"""`labelwise monitor` without a real detector: a scripted detector whose confidence follows the image's brightness
(sure on daylight scenes, unsure on night scenes) and whose embedding is the image's brightness seen by tuned units, so the flagging
rules, the limits, resume and drift are exercised on the real store, engine, config and synthetic images in
seconds. The same stream through a real YOLO model is in test_monitor_yolo.py (slow)."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.detections import ImageDetections
from labelwise.detectors.base import TrainRequest, TrainResult
from labelwise.fileio import sha256_file
from labelwise.loop import LoopError, Workspace
from labelwise.synthetic import ScenarioSpec, generate
from labelwise.workflow import monitoring
from labelwise.workflow.scoring import engine_for

pytestmark = pytest.mark.timeout(120)

DAY0 = datetime(2025, 3, 1, 12, 0, tzinfo=timezone.utc)


class SceneDetector:
    """Train: a weights file. Score: 1-3 boxes of common classes whose confidence is the image's brightness
    (daylight ~0.9, night ~0.35, with a second class close behind at night), and an embedding that is the mean
    brightness through units tuned to one brightness each, plus a
    little per-image noise. Records every image it scores."""

    def __init__(self):
        self.scored: list[str] = []

    def train(self, request: TrainRequest) -> TrainResult:
        request.out_dir.mkdir(parents=True, exist_ok=True)
        weights = request.out_dir / "best.pt"
        weights.write_text(str(request.out_dir))
        return TrainResult(weights, 0.5, 0.3, {}, 0.01)

    def score(self, weights, images, *, imgsz, conf, iou, batch, device, flip=False, max_det=100, **kwargs):
        for sha, path in images:
            self.scored.append(sha)
            arr = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
            light = float(arr.mean())
            rng = np.random.default_rng(int(sha[:8], 16))
            n = int(rng.integers(1, 4))
            sure = float(np.clip(1.4 * light, 0.3, 0.93))
            scores = np.full((n, 6), 0.01, np.float32)
            classes = rng.integers(0, 4, n)
            scores[np.arange(n), classes] = np.clip(sure + rng.normal(0, 0.02, n), 0.06, 0.99)
            scores[np.arange(n), (classes + 1) % 4] = 0.5 * (1 - sure)
            xy = rng.uniform(0, 40, (n, 2))
            boxes = np.concatenate([xy, xy + 16], axis=1).astype(np.float32)
            # units tuned to a brightness each, as a network's features respond to what they were trained on
            bins = np.exp(-((light - np.linspace(0.05, 0.95, 10)) ** 2) / 0.005)
            embedding = np.concatenate([bins, rng.normal(0, 0.05, 6)]).astype(np.float32)
            yield sha, ImageDetections(boxes, scores, np.zeros((n, 4), np.float16), embedding, float(scores.max()),
                                       arr.shape[1], arr.shape[0])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("monitor-data")
    common = dict(image_size=64, burst_fraction=0.0, n_val=0)
    return {
        "train": generate(root / "train", ScenarioSpec(n_train=40, n_val=20, image_size=64, hard_fraction=0.0,
                                                       seed=1)).parent,
        "day": generate(root / "day", ScenarioSpec(n_train=40, hard_fraction=0.0, seed=11, **common)).parent,
        "night": generate(root / "night", ScenarioSpec(n_train=40, hard_fraction=1.0, hard_mix=(1.0, 0.0, 0.0),
                                                       seed=12, **common)).parent,
    }


def _workspace(root: Path, data: dict[str, Path], detector: SceneDetector | None = None, **settings) -> Workspace:
    train = data["train"]
    Workspace.create(root, images=[train / "train" / "images"], data_yaml=train / "data.yaml",
                     labeled=[train / "train" / "images"], model="yolo11n.yaml", imgsz=64,
                     **settings).ingest_sources(progress=False)
    ws = Workspace(root, detector=detector or SceneDetector())
    ws.train()
    return ws


def _clock(days: list[int]):
    """A clock reading DAY0 + days[0] days (the test moves it on by changing days[0]), a second later each call."""
    ticks = iter(range(10**6))
    return lambda: DAY0 + timedelta(days=days[0], seconds=next(ticks))


def _images(folder: Path) -> list[Path]:
    return sorted((folder / "train" / "images").glob("*.png"))


def test_night_is_flagged_far_more_than_daylight_and_the_drift_series_shows_the_shift(tmp_path, data):
    detector = SceneDetector()
    ws = _workspace(tmp_path / "ws", data, detector, monitor={"daily_cap": None})
    day = [0]
    session = monitoring.Monitor(ws.ctx, clock=_clock(day), progress=False)
    day_images, night_images = _images(data["day"]), _images(data["night"])
    # four days: daylight, daylight, night, night
    for d, batch in enumerate([day_images[:20], day_images[20:], night_images[:20], night_images[20:]]):
        day[0] = d
        session.process(batch)
    series = monitoring.drift_series(ws.ctx)
    assert series.days == ["2025-03-01", "2025-03-02", "2025-03-03", "2025-03-04"]
    assert series.images == [20, 20, 20, 20]
    day_share = np.mean(series.flag_share["any"][:2])
    night_share = np.mean(series.flag_share["any"][2:])
    assert night_share >= 0.8 and night_share >= 4 * max(day_share, 0.05), series.flag_share
    # the model is unsure at night and night scenes are far from everything labeled
    assert np.mean(series.flag_share["uncertainty"][2:]) > 0.6 > 0.3 > np.mean(series.flag_share["uncertainty"][:2])
    assert np.mean(series.flag_share["novelty"][2:]) > 0.8
    # per class: confidence drops at night, far below the validation baseline; daylight sits on it
    for name in ("circle", "square", "triangle", "cross"):
        conf = series.mean_conf[name]
        assert max(conf[2:]) < min(conf[:2]) - 0.3
        assert abs(np.nanmean(conf[:2]) - series.baseline_conf[name]) < 0.1
    assert series.expected_share == pytest.approx(0.05)  # 1 - monitor.quantile
    # flagged images are in the pool, copied into the workspace, with their provenance
    report = session.total
    assert report.seen == 80 and report.flagged > 30
    rows = ws.store.conn.execute("SELECT * FROM monitored WHERE outcome='flagged'").fetchall()
    assert len(rows) == report.flagged == ws.store.counts()["pool_unlabeled"]
    for row in rows:
        image = ws.store.image(row["image_id"])
        assert image.split == "pool" and image.state == "unlabeled" and image.path.exists()
        assert image.path.parent == ws.root / "monitor" / "images"
        assert Path(row["source"]).exists() and row["model_hash"] == ws.store.rounds()[-1].model_hash
        assert json.loads(row["reasons"]) and row["seen_at"].startswith(row["day"])
    # the plot and the series it was drawn from
    summary = monitoring.summary(ws.ctx)
    assert summary.plot == ws.root / "monitor" / "drift.png" and summary.plot.stat().st_size > 10_000
    assert "80 production image(s) over 4 day(s)" in summary.line
    drawn = json.loads(summary.plot.with_suffix(".json").read_text())["series"]
    assert drawn["flag_share"]["any"] == pytest.approx(series.flag_share["any"])


def test_the_next_run_selects_flagged_images_like_any_other(tmp_path, data):
    ws = _workspace(tmp_path / "ws", data, monitor={"daily_cap": None})
    report = monitoring.monitor(ws.ctx, [data["night"] / "train" / "images"], progress=False)
    assert report.flagged > 0
    ws.run(rounds=1)
    # round 1 closed at training (everything was labeled); round 2 trains on them, scores and picks from the pool
    picked = {r["image_id"] for r in ws.store.selection(ws.store.current_round().round)}
    flagged = {r[0] for r in ws.store.conn.execute("SELECT image_id FROM monitored WHERE outcome='flagged'")}
    assert picked and picked <= flagged


def test_an_image_seen_twice_is_never_scored_twice_and_a_rerun_goes_on(tmp_path, data):
    detector = SceneDetector()
    ws = _workspace(tmp_path / "ws", data, detector)
    first = monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], progress=False)
    # the baseline scored the 20 validation and 40 labeled images once; then the 40 new ones
    calibration = 20 + 40
    assert first.seen == 40 and first.scored == 40 and len(detector.scored) == calibration + 40
    again = monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], progress=False)
    assert (again.seen, again.scored, again.already_seen) == (0, 0, 40)
    # the same bytes under another name: recorded as seen, not scored
    copy = tmp_path / "copies"
    copy.mkdir()
    for path in _images(data["day"])[:5]:
        (copy / f"renamed-{path.name}").write_bytes(path.read_bytes())
    renamed = monitoring.monitor(ws.ctx, [copy / "*.png"], progress=False)
    assert (renamed.seen, renamed.already_seen) == (0, 5)
    assert len(detector.scored) == calibration + 40
    # an image scored but not recorded (a run killed between the two) is recorded without inference
    night = _images(data["night"])[:3]
    ctx = ws.ctx
    monitoring._score(ctx, engine_for(ctx), monitoring.deployed_model(ctx), [(sha256_file(p), str(p)) for p in night],
                      False)
    scored_before = len(detector.scored)
    resumed = monitoring.monitor(ws.ctx, night, progress=False)
    assert resumed.seen == 3 and resumed.scored == 0 and len(detector.scored) == scored_before
    rows = ws.store.conn.execute("SELECT COUNT(*) FROM monitored").fetchone()[0]
    assert rows == 43


def test_daily_cap_and_near_duplicates_keep_one_scene_from_flooding_the_pool(tmp_path, data):
    ws = _workspace(tmp_path / "ws", data, monitor={"daily_cap": 5})
    day = [0]
    session = monitoring.Monitor(ws.ctx, clock=_clock(day), progress=False)
    night = _images(data["night"])
    first = session.process(night[:20])
    assert first.flagged == 5 and first.capped == first.reasons["novelty"] - 5 - first.duplicates
    assert ws.store.monitored_on("2025-03-01") == 5
    day[0] = 1  # a new day: a new allowance
    second = session.process(night[20:30])
    assert second.flagged == 5
    # a camera stuck on one scene: near copies of a flagged image (fresh sensor noise, so new bytes)
    flagged = ws.store.conn.execute("SELECT source FROM monitored WHERE outcome='flagged' LIMIT 1").fetchone()[0]
    base = np.asarray(Image.open(flagged), dtype=np.int16)
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    rng = np.random.default_rng(0)
    for i in range(6):
        noisy = np.clip(base + rng.integers(-2, 3, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(stuck / f"frame{i}.png")
    day[0] = 2
    third = session.process(sorted(stuck.iterdir()))
    assert third.seen == 6 and third.duplicates == 6 and third.flagged == 0
    dup_of = {r[0] for r in ws.store.conn.execute("SELECT duplicate_of FROM monitored WHERE outcome='duplicate'")}
    assert dup_of == {str(ws.store.image_by_sha(sha256_file(Path(flagged))).path)}
    assert "6 near duplicate(s)" in session.total.line()
    series = monitoring.drift_series(ws.ctx)
    assert series.outcomes["duplicate"] == [0, 0, 6] and series.outcomes["flagged"] == [5, 5, 0]


def test_no_trained_model_says_which_command_to_run_first(tmp_path, data):
    train = data["train"]
    Workspace.create(tmp_path / "ws", images=[train / "train" / "images"], data_yaml=train / "data.yaml",
                     model="yolo11n.yaml", imgsz=64).ingest_sources(progress=False)
    ws = Workspace(tmp_path / "ws", detector=SceneDetector())
    with pytest.raises(LoopError, match=r"labelwise run .*labelwise train"):
        monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], progress=False)
    with pytest.raises(FileNotFoundError, match="no such file"):
        monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], model=tmp_path / "missing.pt")
    with pytest.raises(FileNotFoundError, match="matches no file"):
        monitoring.expand([str(tmp_path / "nothing" / "*.jpg")])


def test_a_given_model_is_used_and_recorded(tmp_path, data):
    ws = _workspace(tmp_path / "ws", data)
    deployed = tmp_path / "deployed.pt"
    deployed.write_text("another model")
    report = monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], model=deployed, progress=False)
    assert report.model == sha256_file(deployed)[:16] != ws.store.rounds()[-1].model_hash
    hashes = {r[0] for r in ws.store.conn.execute("SELECT DISTINCT model_hash FROM monitored")}
    assert hashes == {report.model}


def test_watch_scores_files_written_to_the_folder_until_stopped(tmp_path, data):
    ws = _workspace(tmp_path / "ws", data, monitor={"daily_cap": None})
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    night = _images(data["night"])[:6]
    (incoming / "before.png").write_bytes(night[0].read_bytes())  # there before the watch starts
    stop, ready = threading.Event(), threading.Event()
    batches, result = [], {}

    def run() -> None:  # the store's connection belongs to the thread that opened it: a workspace of its own
        watcher = Workspace(ws.root, detector=SceneDetector())
        result["report"] = monitoring.watch(watcher.ctx, [incoming], stop=stop, ready=ready, settle_s=0.2,
                                            on_batch=batches.append, progress=False)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        assert ready.wait(60)
        for i, path in enumerate(night[1:]):
            (incoming / f"frame{i}.png").write_bytes(path.read_bytes())
        (incoming / "notes.txt").write_text("not an image")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if ws.store.conn.execute("SELECT COUNT(*) FROM monitored").fetchone()[0] == 6:
                break
            time.sleep(0.1)
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    report = result["report"]
    assert report.seen == 6 and not report.unreadable
    sources = {Path(r[0]).name for r in ws.store.conn.execute("SELECT source FROM monitored")}
    assert sources == {"before.png", *(f"frame{i}.png" for i in range(5))}
    assert sum(b.seen for b in batches) == 6


# -- the command line -------------------------------------------------------------------------------------------------


def test_cli_without_a_trained_model_names_the_command_to_run_first(tmp_path, data):
    from typer.testing import CliRunner

    from labelwise.cli import app

    train = data["train"]
    Workspace.create(tmp_path / "ws", images=[train / "train" / "images"], data_yaml=train / "data.yaml",
                     model="yolo11n.yaml", imgsz=64).ingest_sources(progress=False)
    result = CliRunner().invoke(app, ["monitor", "-w", str(tmp_path / "ws"), "--images",
                                      str(data["day"] / "train" / "images")])
    assert result.exit_code == 2
    assert "no trained model" in result.output and "labelwise run" in result.output
    assert "labelwise train" in result.output and "Traceback" not in result.output
    glob = CliRunner().invoke(app, ["monitor", "-w", str(tmp_path / "ws"), "--images", str(tmp_path / "*.jpg")])
    assert glob.exit_code == 2 and "matches no file" in glob.output


def test_status_and_report_show_the_drift_plot(tmp_path, data):
    from typer.testing import CliRunner

    from labelwise.cli import app
    from labelwise.report import build_report

    ws = _workspace(tmp_path / "ws", data)
    day = [0]
    session = monitoring.Monitor(ws.ctx, clock=_clock(day), progress=False)
    session.process(_images(data["day"])[:10])
    day[0] = 1
    session.process(_images(data["night"])[:10])
    result = CliRunner().invoke(app, ["status", "-w", str(ws.root)])
    assert result.exit_code == 0, result.output
    flat = " ".join(result.output.split())
    assert "20 production image(s) over 2 day(s)" in flat
    assert f"drift plot {ws.root / 'monitor' / 'drift.png'}" in flat
    html = build_report(ws, tmp_path / "report.html").read_text()
    assert 'id="drift-plot"' in html and "20 production image(s)" in html


def test_nearest_labeled_is_the_cosine_distance_and_faiss_agrees_with_numpy():
    rng = np.random.default_rng(0)
    labeled = rng.normal(0, 1, (300, 8)).astype(np.float32)
    probe = np.vstack([3 * labeled[:4], rng.normal(0, 1, (6, 8))]).astype(np.float32)
    nearest = monitoring.NearestLabeled(labeled)
    got = nearest.distance(probe)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    assert got == pytest.approx(1 - (unit(probe) @ unit(labeled).T).max(axis=1), abs=1e-5)
    assert got[:4] == pytest.approx(np.zeros(4), abs=1e-5)  # the same direction: no distance
    without = monitoring.NearestLabeled(labeled)
    without.index = None  # the NumPy path
    assert without.distance(probe) == pytest.approx(got, abs=1e-5)


class RareDetector(SceneDetector):
    """SceneDetector that also sees a confident ring (class 4, rare in the labeled set) in every third image."""

    def score(self, weights, images, **kwargs):
        for sha, det in super().score(weights, images, **kwargs):
            if int(sha[:6], 16) % 3 == 0:
                scores = det.class_scores.copy()
                scores[0] = 0.01
                scores[0, 4] = 0.9
                det = ImageDetections(det.boxes, scores, det.box_features, det.embedding, det.max_candidate_score,
                                      det.width, det.height)
            yield sha, det


def test_a_class_rare_in_the_labeled_set_flags_the_image(tmp_path, data):
    ws = _workspace(tmp_path / "ws", data, RareDetector(), monitor={"daily_cap": None})
    counts = ws.store.class_box_counts(6)
    share = counts / counts.sum()
    report = monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], progress=False)
    baseline = monitoring.Baseline.from_json(ws.store.kv_get("monitor", "baseline"))
    assert baseline.rare == [c for c in range(6) if share[c] < 0.05] and 4 in baseline.rare
    rows = ws.store.conn.execute("SELECT sha256, reasons, class_stats FROM monitored").fetchall()
    with_ring = {r[0] for r in rows if "4" in json.loads(r[2])}
    rare = {r[0] for r in rows if "rare_class" in json.loads(r[1])}
    assert with_ring and rare == with_ring and report.reasons["rare_class"] == len(with_ring)


class InterruptingDetector(SceneDetector):
    """Ctrl-C after `after` images."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def score(self, weights, images, **kwargs):
        for item in super().score(weights, images, **kwargs):
            if len(self.scored) > self.after:
                raise KeyboardInterrupt
            yield item


def test_ctrl_c_keeps_what_was_recorded_and_the_rerun_goes_on(tmp_path, data):
    ws = _workspace(tmp_path / "ws", data)
    monitoring.monitor(ws.ctx, [data["day"] / "train" / "images"], progress=False)  # the baseline, scored once
    stream = [*_images(data["day"]), *_images(data["night"])]
    copies = tmp_path / "stream"
    copies.mkdir()
    for i, path in enumerate(stream):  # mirrored: 80 images the workspace has not seen
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(copies / f"{i:03d}.png")
    stopping = InterruptingDetector(after=monitoring.CHUNK + 6)
    first = monitoring.monitor(Workspace(ws.root, detector=stopping).ctx, [copies], progress=False)
    assert first.interrupted and first.seen == monitoring.CHUNK  # the first chunk, recorded image by image
    going_on = SceneDetector()
    second = monitoring.monitor(Workspace(ws.root, detector=going_on).ctx, [copies], progress=False)
    assert not second.interrupted and second.seen == 80 - monitoring.CHUNK
    assert second.already_seen == monitoring.CHUNK and len(going_on.scored) == 80 - monitoring.CHUNK
    assert ws.store.conn.execute("SELECT COUNT(*) FROM monitored").fetchone()[0] == 40 + 80
