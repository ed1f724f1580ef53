"""Progress bars for long steps (rich), switched off with ``AIGI_NO_PROGRESS=1`` or ``enabled=False``."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

T = TypeVar("T")


def progress_iter(items: Iterable[T], total: int | None = None, description: str = "", enabled: bool = True) -> Iterator[T]:
    if not enabled or os.environ.get("AIGI_NO_PROGRESS"):
        yield from items
        return
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False, console=Console(stderr=True)) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)
