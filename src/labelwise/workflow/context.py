"""What every step of the workflow shares: the workspace's state, the error a step raises, crash injection, and which
round and step come next (the state every step checks before it runs)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
    threads: int | None = None  # `--threads`: this process's CPU threads, over `threads:` in labelwise.yaml

    @property
    def threads_setting(self) -> int | None:
        """CPU threads asked for: `--threads`, else `threads:` in labelwise.yaml; None is auto (OMP_NUM_THREADS,
        else the usable cores), resolved by the detector before Ultralytics' import rewrites OMP_NUM_THREADS."""
        return self.threads if self.threads is not None else self.config.threads

    @property
    def detector(self) -> Detector:
        # Created on first use: importing or opening a workspace must not import ultralytics/torch (status, export
        # and import never need them).
        if self.detector_ is None:
            from labelwise.detectors.ultralytics import UltralyticsDetector

            self.detector_ = UltralyticsDetector(self.root / ".ultralytics", threads=self.threads_setting)
        return self.detector_

    def round_dir(self, round_no: int) -> Path:
        return self.root / "rounds" / f"r{round_no:03d}"


def stop_settings_hash(config: WorkspaceConfig) -> str:
    """A fingerprint of the settings that decide when the loop stops: the `stopping:` section and `budget.total`.
    Recorded with a stop, so that editing them in labelwise.yaml lifts a stop they no longer justify."""
    def plain(value: Any) -> Any:
        if hasattr(value, "model_dump"):  # a pydantic model
            return value.model_dump(mode="json")
        if dataclasses.is_dataclass(value):
            return dataclasses.asdict(value)
        return value

    settings = {"stopping": plain(config.stopping), "budget.total": config.budget.total}
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def finished(ctx: WorkspaceContext) -> str | None:
    """Why the loop stopped, or None while it goes on. A stop recorded under other stopping settings (see
    `stop_settings_hash`) no longer holds: the next step clears it."""
    reason = ctx.store.kv_get("loop", "finished")
    if not reason:
        return None
    recorded = ctx.store.kv_get("loop", "finished_settings")
    if recorded is not None and recorded != stop_settings_hash(ctx.config):
        return None
    return reason


def record_stop(ctx: WorkspaceContext, reason: str, close_round: int | None = None) -> None:
    """Record that the loop stopped and why, with the settings that made it stop; `close_round` is marked done
    (a round stopped before scoring: its model is the last word)."""
    with ctx.store.transaction():
        if close_round is not None:
            ctx.store.update_round(close_round, step="done")
        ctx.store.kv_set("loop", "finished", reason)
        ctx.store.kv_set("loop", "finished_settings", stop_settings_hash(ctx.config))


def clear_stop(ctx: WorkspaceContext) -> str | None:
    """Lift a recorded stop; returns its reason (None when there was none). A round the stop closed right after
    training (done, nothing selected, never finished by annotation) is reopened at its score step, so going on
    scores with the model already trained instead of training it again on the same labels."""
    reason = ctx.store.kv_get("loop", "finished")
    with ctx.store.transaction():
        current = ctx.store.current_round()
        if (reason and current is not None and current.step == "done" and current.model_hash
                and current.finished_at is None and not ctx.store.selection(current.round)):
            ctx.store.update_round(current.round, step="score")
        ctx.store.kv_set("loop", "finished", None)
        ctx.store.kv_set("loop", "finished_settings", None)
    return reason


def open_round(ctx: WorkspaceContext) -> tuple[int, str]:
    """The round and step to do next, opening a new round when the last one is done."""
    if ctx.store.kv_get("loop", "finished") and finished(ctx) is None:
        clear_stop(ctx)  # labelwise.yaml's stopping settings changed since the stop: they decide again
    current = ctx.store.current_round()
    if current is not None and current.step != "done":
        return current.round, current.step
    round_no = 1 if current is None else current.round + 1
    labeled = ctx.store.counts()["pool_labeled"]
    step = "train" if labeled else "select"
    ctx.store.start_round(round_no, step)
    ctx.store.update_round(round_no, strategy=json.dumps(ctx.config.strategy_for_round(round_no)))
    return round_no, step
