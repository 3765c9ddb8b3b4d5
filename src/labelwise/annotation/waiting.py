"""Waiting for annotators without blocking a keyboard: polling with exponential back-off and a progress bar."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from labelwise.annotation.base import AnnotationBackend, AnnotationProgress, Batch
from labelwise.progress import progress_bar


def poll(backend: AnnotationBackend, batch: Batch, *, timeout: float = 3600.0, interval: float = 2.0,
         max_interval: float = 60.0, show: bool = True,
         on_progress: Callable[[AnnotationProgress], None] | None = None) -> tuple[AnnotationProgress, bool]:
    """Poll `backend.progress` until the batch is settled: every image done (accepted or skipped), or nothing left
    pending but rejected work (waiting cannot finish that: a person must correct it in the tool). Returns the last
    progress and whether `timeout` seconds passed first. `on_progress` hears every change.

    The interval doubles after every poll that shows no new work, up to `max_interval`, and drops back to
    `interval` as soon as something moves, so an active annotator is followed closely and an idle one is not
    hammered.
    """
    deadline = time.monotonic() + timeout
    delay, last = interval, None
    with progress_bar() if show else _NoBar() as bar:
        task = bar.add_task(f"Round {batch.round} annotations", total=len(batch.items), rate="")
        while True:
            progress = backend.progress(batch)
            bar.update(task, total=progress.total, completed=progress.done,
                       rate=f"{progress.rejected} rejected, {progress.skipped} skipped")
            if on_progress is not None and progress != last:
                on_progress(progress)
            if progress.complete or (not progress.pending and progress.rejected):
                return progress, False
            if time.monotonic() >= deadline:
                return progress, True
            delay = interval if last is not None and progress.done > last.done else min(delay * 2, max_interval)
            last = progress
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))


def wait_until_done(backend: AnnotationBackend, batch: Batch, **kwargs: Any) -> bool:
    """True when every image of the batch is done (a rejected annotation keeps it open); `poll`'s arguments."""
    return poll(backend, batch, **kwargs)[0].complete


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass
