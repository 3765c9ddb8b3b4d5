"""One writer per workspace: a second `labelwise` command that changes the workspace refuses at once and names the
process holding it; reading goes on; a killed holder blocks nothing. Real processes throughout: the holder is a
`labelwise add` stuck opening a FIFO named like an image (it waits there for a writer, holding the lock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labelwise.lock import HOLDER_NAME, WorkspaceBusy, workspace_lock
from labelwise.loop import Workspace

pytestmark = pytest.mark.timeout(180)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "labelwise", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    pool = tmp_path / "pool"
    pool.mkdir()
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(pool / f"{i}.png")
    Workspace.create(tmp_path / "ws", images=[pool], classes=["a"], model="yolo11n.yaml",
                     budget={"per_round": 3}).ingest_sources(progress=False)  # no val reserve: 6 images
    return tmp_path / "ws"


def _stuck_add(workspace: Path, tmp_path: Path) -> subprocess.Popen:
    """A real `labelwise add` that holds the lock until the test lets it go (or kills it)."""
    stuck = tmp_path / "stuck"
    stuck.mkdir()
    os.mkfifo(stuck / "wait.png")
    proc = subprocess.Popen([sys.executable, "-m", "labelwise", "add", str(stuck), "-w", str(workspace)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (workspace / HOLDER_NAME).exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the add never took the lock"
        time.sleep(0.1)
    return proc


def test_a_second_writer_refuses_at_once_naming_the_holder_and_status_still_reads(workspace, tmp_path):
    holder = _stuck_add(workspace, tmp_path)
    try:
        for command in (["run", "-w", str(workspace)], ["select", "-w", str(workspace)],
                        ["add", str(tmp_path / "pool"), "-w", str(workspace)]):
            started = time.monotonic()
            refused = _cli(*command)
            assert refused.returncode == 2, refused.stdout + refused.stderr
            assert time.monotonic() - started < 30  # at once, no waiting for the lock
            message = " ".join(refused.stderr.split())
            assert f"PID {holder.pid}" in message and "labelwise add" in message and "in use" in message
            assert f"kill {holder.pid}" in message and "Wait for it to finish" in message
        status = _cli("status", "-w", str(workspace))  # reading takes no lock
        assert status.returncode == 0, status.stderr
        assert Workspace(workspace).store.selection(1) == []  # the refused select changed nothing
    finally:
        holder.kill()
        holder.wait(timeout=30)


def test_a_killed_holder_leaves_no_lock_behind(workspace, tmp_path):
    holder = _stuck_add(workspace, tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=30)
    assert (workspace / HOLDER_NAME).exists()  # its sidecar stays, stale: it must not matter
    selected = _cli("select", "-w", str(workspace))
    assert selected.returncode == 0, selected.stderr
    assert len(Workspace(workspace).store.selection(1)) == 3
    assert not (workspace / HOLDER_NAME).exists()  # a command that ends removes its sidecar


def test_the_holder_lets_go_when_its_command_ends(workspace, tmp_path):
    holder = _stuck_add(workspace, tmp_path)
    with open(tmp_path / "stuck" / "wait.png", "wb"):  # the add reads an empty "image", quarantines it, ends
        pass
    out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0, err
    assert _cli("select", "-w", str(workspace)).returncode == 0


def test_in_process_the_lock_is_exclusive_and_the_sidecar_names_this_process(workspace):
    with workspace_lock(workspace, "labelwise train -w ws"):
        info = json.loads((workspace / HOLDER_NAME).read_text())
        assert info["pid"] == os.getpid() and info["command"] == "labelwise train -w ws"
        with pytest.raises(WorkspaceBusy, match=f"PID {os.getpid()}"):
            with workspace_lock(workspace):
                pass
    with workspace_lock(workspace):  # released
        pass
