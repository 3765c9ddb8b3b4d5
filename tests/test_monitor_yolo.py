"""`labelwise monitor` with a real detector: the pretrained YOLOv8s checkpoint (benchmarks/pretrained.py) fine-tuned
for 3 epochs on synthetic daylight scenes at 96 px, then a stream of production images whose scenario shifts from
daylight to night halfway, over four days. Slow (minutes on a CPU): the model is trained once for the module."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.loop import Workspace
from labelwise.synthetic import COMMON_CLASSES, CLASS_NAMES, ScenarioSpec, generate
from labelwise.workflow import monitoring

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

CHECKPOINT = Path(__file__).resolve().parents[1] / "benchmarks" / "out" / "pretrained" / "yolov8s-coco-finetuned.pt"
SIZE = 96


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, Path]:
    if not CHECKPOINT.exists():
        pytest.skip(f"{CHECKPOINT} is missing: fetch it with `.venv/bin/python benchmarks/pretrained.py`")
    root = tmp_path_factory.mktemp("monitor-yolo")
    stream = dict(image_size=SIZE, burst_fraction=0.0, n_val=0)
    train = generate(root / "train", ScenarioSpec(n_train=200, n_val=150, image_size=SIZE, hard_fraction=0.0,
                                                  seed=1)).parent
    day = generate(root / "day", ScenarioSpec(n_train=60, hard_fraction=0.0, seed=11, **stream)).parent
    night = generate(root / "night", ScenarioSpec(n_train=60, hard_fraction=1.0, hard_mix=(1.0, 0.0, 0.0), seed=12,
                                                  **stream)).parent
    ws = root / "ws"
    Workspace.create(ws, images=[train / "train" / "images"], data_yaml=train / "data.yaml",
                     labeled=[train / "train" / "images"], model=str(CHECKPOINT), imgsz=SIZE,
                     train={"epochs": 3, "batch": 16, "extra": {"freeze": 10}},
                     monitor={"daily_cap": None}).ingest_sources(progress=False)
    Workspace(ws).train()
    return {"ws": ws, "day": day / "train" / "images", "night": night / "train" / "images"}


def test_night_is_flagged_several_times_more_than_daylight_and_the_drift_shows_it(trained):
    ws = Workspace(trained["ws"])
    assert ws.store.rounds()[-1].map50 > 0.5  # a model that sees the daylight objects
    day = [0]
    ticks = iter(range(10**6))
    clock = lambda: datetime(2025, 3, 1, 9, tzinfo=timezone.utc) + timedelta(days=day[0], seconds=next(ticks))  # noqa: E731
    session = monitoring.Monitor(ws.ctx, clock=clock, progress=False)
    daylight, night = sorted(trained["day"].glob("*.png")), sorted(trained["night"].glob("*.png"))
    for d, batch in enumerate([daylight[:30], daylight[30:], night[:30], night[30:]]):
        day[0] = d
        session.process(batch)
    series = monitoring.drift_series(ws.ctx)
    assert series.images == [30, 30, 30, 30]
    day_rate = np.mean(series.flag_share["any"][:2])
    night_rate = np.mean(series.flag_share["any"][2:])
    print(f"\nflagged (any rule): daylight {day_rate:.2f}, night {night_rate:.2f}; per rule "
          + ", ".join(f"{r} {np.mean(v[:2]):.2f} -> {np.mean(v[2:]):.2f}" for r, v in series.flag_share.items()))
    assert night_rate >= 2.5 * day_rate and night_rate >= 0.4, series.flag_share
    # the model's confidence in the common classes drops at night, below what it shows on its validation set
    common = [CLASS_NAMES[c] for c in COMMON_CLASSES]
    day_conf = np.nanmean([series.mean_conf[name][:2] for name in common])
    night_conf = np.nanmean([series.mean_conf[name][2:] for name in common])
    base_conf = np.mean([series.baseline_conf[name] for name in common])
    print(f"mean confidence (common classes): validation {base_conf:.2f}, daylight {day_conf:.2f}, night "
          f"{night_conf:.2f}")
    assert night_conf < day_conf - 0.05 and night_conf < base_conf - 0.05
    assert abs(day_conf - base_conf) < 0.08
    summary = monitoring.summary(ws.ctx)
    assert summary.plot.exists() and "120 production image(s) over 4 day(s)" in summary.line
    # flagged images are pool images now: a selection sees them
    flagged = ws.store.conn.execute("SELECT COUNT(*) FROM monitored WHERE outcome='flagged'").fetchone()[0]
    assert flagged == ws.store.counts()["pool_unlabeled"] > 0


def test_watch_from_the_command_line_scores_new_files_and_stops_cleanly_on_ctrl_c(trained, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "labelwise", "monitor", "-w", str(trained["ws"]), "--images",
                             str(incoming), "--watch"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
    db = sqlite3.connect(trained["ws"] / "labelwise.db", timeout=30)
    before = db.execute("SELECT COUNT(*) FROM monitored").fetchone()[0]
    try:
        time.sleep(3)  # the watcher loads the model and calibrates; files written meanwhile are seen all the same
        night = sorted(trained["night"].glob("*.png"))
        for i, path in enumerate(night[:3]):  # mirrored: images the first test has not seen
            Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(incoming / f"cam-{i}.png")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            rows = db.execute("SELECT COUNT(*) FROM monitored WHERE source LIKE ?", (f"{incoming}%",)).fetchone()[0]
            if rows == 3:
                break
            time.sleep(0.5)
        assert rows == 3
    finally:
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "stopped watching (Ctrl-C)" in output and "Traceback" not in output
    assert db.execute("SELECT COUNT(*) FROM monitored").fetchone()[0] == before + 3
