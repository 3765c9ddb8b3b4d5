"""What every step of the workflow shares: the workspace's state, the error a step raises, crash injection, and which
round and step come next (the state every step checks before it runs)."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path

from labelwise.config import WorkspaceConfig
from labelwise.detectors.base import Detector
from labelwise.store import Store


class LoopError(RuntimeError):
    """The loop cannot take the next step; the message says why and what to do."""


def crash_point(name: str) -> None:
    """Fault injection for the crash-safety tests: LABELWISE_CRASH_AT=<name> kills the process here with SIGKILL,
    exactly as `kill -9` would, at a moment a timing-based kill could not hit reliably."""
    if os.environ.get("LABELWISE_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class WorkspaceContext:
    """The workspace as the steps see it. The config object is shared with the facade (not copied), so a change to
    `Workspace.config` (e.g. a simulation setting the budget) is seen by every step."""

    root: Path
    config: WorkspaceConfig
    store: Store
    detector_: Detector | None = None

    @property
    def detector(self) -> Detector:
        # Created on first use: importing or opening a workspace must not import ultralytics/torch (status, export
        # and import never need them).
        if self.detector_ is None:
            from labelwise.detectors.ultralytics import UltralyticsDetector

            self.detector_ = UltralyticsDetector(self.root / ".ultralytics")
        return self.detector_

    def round_dir(self, round_no: int) -> Path:
        return self.root / "rounds" / f"r{round_no:03d}"


def finished(ctx: WorkspaceContext) -> str | None:
    """Why the loop stopped, or None while it goes on."""
    return ctx.store.kv_get("loop", "finished")


def open_round(ctx: WorkspaceContext) -> tuple[int, str]:
    """The round and step to do next, opening a new round when the last one is done."""
    current = ctx.store.current_round()
    if current is not None and current.step != "done":
        return current.round, current.step
    round_no = 1 if current is None else current.round + 1
    labeled = ctx.store.counts()["pool_labeled"]
    step = "train" if labeled else "select"
    ctx.store.start_round(round_no, step)
    ctx.store.update_round(round_no, strategy=json.dumps(ctx.config.strategy_for_round(round_no)))
    return round_no, step
