"""Adding images and labels, and creating a workspace: crash-safe, and nothing a label file said is lost or leaks
back into the pool. No detector here; a kill is a real SIGKILL of a `labelwise` process (crash_point)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
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
