"""One writer at a time per workspace: every command that changes a workspace holds its lock.

The lock is an OS file lock (`filelock.FileLock`, flock(2) on Linux) on WORKSPACE/.labelwise.lock, taken without
waiting: a second writer refuses at once with the holder's PID, host, command and start time, read from the sidecar
WORKSPACE/.labelwise.lock.holder that the holder writes after taking the lock. The OS drops the lock when the
holding process ends, however it ends (kill -9 included), so a stale lock never blocks; a sidecar left behind by a
killed holder is only ever read while someone else holds the lock, and is overwritten by the next holder.
Reading (`labelwise status`, `report`) takes no lock: SQLite's WAL lets it read while a writer works.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from labelwise.fileio import atomic_write_text, pid_alive

LOCK_NAME = ".labelwise.lock"
HOLDER_NAME = ".labelwise.lock.holder"


class WorkspaceBusy(RuntimeError):
    """Another process holds the workspace's lock; the message names it and says what to do."""


def command_line() -> str:
    """How this process was started, as a person would type it."""
    args = list(sys.argv)
    if args and Path(args[0]).name in ("__main__.py", "labelwise"):
        args[0] = "labelwise"
    return " ".join(args)


@contextmanager
def workspace_lock(root: Path, command: str | None = None) -> Iterator[None]:
    """Hold `root`'s lock for the block, or raise WorkspaceBusy at once. A folder that does not exist is not
    locked (the command then fails with its own message about the missing workspace)."""
    root = Path(root).absolute()
    if not root.is_dir():
        yield
        return
    lock = FileLock(str(root / LOCK_NAME), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise WorkspaceBusy(busy_message(root)) from None
    holder = root / HOLDER_NAME
    try:
        atomic_write_text(holder, json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": command or command_line(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }))
        yield
    finally:
        holder.unlink(missing_ok=True)  # before the release: never the next holder's sidecar
        lock.release()


def holder(root: Path) -> dict | None:
    """What the sidecar says about the process holding `root`'s lock (None when there is none or it is unreadable)."""
    try:
        data = json.loads((Path(root) / HOLDER_NAME).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("pid"), int) else None


def busy_message(root: Path) -> str:
    info = holder(root)
    here = socket.gethostname()
    if info is None or (info.get("host") == here and not pid_alive(info["pid"])):
        # the holder has only just started (its sidecar is not written yet; one left by a killed holder is stale)
        return (f"{root} is in use by another labelwise process that has just started: only one command that "
                "changes a workspace runs at a time. "
                f"Wait for it to finish, then run this command again (`labelwise status -w {root}` works "
                "meanwhile).")
    pid, host = info["pid"], info.get("host") or "?"
    where = f"PID {pid}" + ("" if host == here else f" on host {host}")
    return (f"{root} is in use by `{info.get('command', 'labelwise')}` ({where}, since {info.get('since', '?')}): only "
            "one command that changes a workspace runs at a time. Wait for it to finish and run this command "
            f"again, or stop it (`kill {pid}`{'' if host == here else f' on {host}'}) if it should not be running; "
            "a stopped or killed process releases the lock by itself. `labelwise status` works meanwhile.")
