"""Progress bars for long work: counts, rate and time left, on stderr so stdout stays parseable."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")
console = Console(stderr=True)


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
        TextColumn("[cyan]{task.fields[rate]}"), TimeRemainingColumn(),
        console=console, transient=False,
    )


def track(items: Iterable[T], total: int, description: str) -> Iterator[T]:
    """Iterate with a bar showing done/total, items per second and time left."""
    import time

    started = time.perf_counter()
    with progress_bar() as bar:
        task = bar.add_task(description, total=total, rate="")
        for done, item in enumerate(items, start=1):
            yield item
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(task, advance=1, rate=f"{done / elapsed:.1f} img/s")
