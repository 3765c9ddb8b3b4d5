"""Waiting for annotators without blocking a keyboard: polling with exponential back-off and a progress bar."""

from __future__ import annotations

import time

from labelwise.annotation.base import AnnotationBackend, Batch
from labelwise.progress import progress_bar


def wait_until_done(backend: AnnotationBackend, batch: Batch, *, timeout: float = 3600.0, interval: float = 2.0,
                    max_interval: float = 60.0, show: bool = True) -> bool:
    """Poll `backend.progress` until every image of the batch is done (accepted or skipped: a rejected annotation
    keeps the batch open until it is corrected); True if done before `timeout` seconds.

    The interval doubles after every poll that shows no new work, up to `max_interval`, and drops back to
    `interval` as soon as something moves, so an active annotator is followed closely and an idle one is not
    hammered.
    """
    deadline = time.monotonic() + timeout
    delay, last_done = interval, -1
    with progress_bar() if show else _NoBar() as bar:
        task = bar.add_task(f"Round {batch.round} annotations", total=len(batch.items), rate="")
        while True:
            progress = backend.progress(batch)
            bar.update(task, total=progress.total, completed=progress.done,
                       rate=f"{progress.rejected} rejected, {progress.skipped} skipped")
            if progress.complete:
                return True
            if time.monotonic() >= deadline:
                return False
            delay = interval if progress.done > last_done and last_done >= 0 else min(delay * 2, max_interval)
            last_done = progress.done
            time.sleep(max(0.0, min(delay, deadline - time.monotonic())))


class _NoBar:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *args, **kwargs):
        return 0

    def update(self, *args, **kwargs):
        pass
