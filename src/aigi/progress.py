"""Progress bars for long steps (rich), switched off with ``AIGI_NO_PROGRESS=1`` or ``enabled=False``.

* :func:`progress_iter` wraps an iterable; ``weight`` makes one item count for several units (a batch of images
  advances the bar by its number of images).
* :func:`progress_bar` is a bar the caller drives (``advance``, ``update``), e.g. one overall bar over every epoch
  of a training run with the running loss in its ``status`` field. While its ``with`` block runs, the bars that
  :func:`progress_iter` and :func:`progress_bar` open inside it are drawn as indented rows under it (removed when
  they finish) instead of as separate bars; with ``share`` set, each such nested bar moves the outer one by
  ``share`` over its whole length, so the outer bar's ETA moves smoothly.
* :func:`notice` prints one line to the same console (stderr).

Everything draws on :func:`make_console` (stderr); tests replace it to read what was drawn.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from aigi.names import shown

T = TypeVar("T")


def make_console() -> Console:
    """The console bars and notices draw on: stderr, so piped output (``--json``) stays clean."""
    return Console(stderr=True)


def showing(enabled: bool = True) -> bool:
    """Whether a bar asked for with ``enabled`` is drawn (``AIGI_NO_PROGRESS`` switches every bar off)."""
    return bool(enabled) and not os.environ.get("AIGI_NO_PROGRESS")


def notice(message: str) -> None:
    """One plain line on the progress console (stderr), never wrapped, control characters escaped
    (:func:`aigi.names.shown`); not affected by ``AIGI_NO_PROGRESS``."""
    make_console().print(shown(message), markup=False, highlight=False, soft_wrap=True)


def _columns() -> tuple:
    return (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}", markup=False),
    )


class Bar:
    """One bar: drawn as a rich task, or silent (``progress`` None) while still counting, so callers need no ``if``.

    ``completed``, ``total``, ``description`` and ``status`` hold what the bar shows; ``share`` (default 0) is how far
    a bar nested inside this one's ``with`` block moves this one over its whole length."""

    def __init__(
        self,
        progress: Progress | None,
        total: float | None,
        completed: float,
        description: str,
        nested: bool = False,
        parent: Bar | None = None,
    ) -> None:
        self.progress, self.total, self.completed, self.description = progress, total, completed, description
        self.status, self.share, self.nested = "", 0.0, nested
        self._parent = parent
        # how much one unit of this bar moves its parent
        self._feed = parent.share / total if (parent is not None and parent.share and total) else 0.0
        self.task: TaskID | None = None
        if progress is not None:
            self.task = progress.add_task(self._shown(description), total=total, completed=completed, status="")

    def _shown(self, description: str) -> str:
        return f"  {escape(description)}" if self.nested else f"[bold]{escape(description)}[/bold]"

    def advance(self, amount: float = 1) -> None:
        self.completed += amount
        if self.progress is not None:
            self.progress.advance(self.task, amount)
        if self._feed:
            self._parent.advance(amount * self._feed)

    def update(
        self,
        *,
        description: str | None = None,
        completed: float | None = None,
        total: float | None = None,
        status: str | None = None,
    ) -> None:
        """Change what the bar shows; ``status`` is a short text after the ETA (e.g. the running loss)."""
        fields: dict = {}
        if description is not None:
            self.description = description
            fields["description"] = self._shown(description)
        if completed is not None:
            self.completed = fields["completed"] = completed
        if total is not None:
            self.total = fields["total"] = total
        if status is not None:
            self.status = fields["status"] = status
        if self.progress is not None and fields:
            self.progress.update(self.task, **fields)


_active: ContextVar[Bar | None] = ContextVar("aigi_progress_active", default=None)


@contextmanager
def _open(total: float | None, description: str, completed: float, enabled: bool) -> Iterator[Bar]:
    """A drawn bar (a row under the active outer bar, or a new rich display) or a silent one."""
    if not showing(enabled):
        yield Bar(None, total, completed, description)
        return
    parent = _active.get()
    if parent is not None and parent.progress is not None:
        bar = Bar(parent.progress, total, completed, description, nested=True, parent=parent)
        try:
            yield bar
        finally:
            parent.progress.remove_task(bar.task)
        return
    with Progress(*_columns(), transient=False, console=make_console()) as progress:
        yield Bar(progress, total, completed, description)


@contextmanager
def progress_bar(
    total: float | None, description: str = "", enabled: bool = True, completed: float = 0
) -> Iterator[Bar]:
    """A bar the caller advances; bars opened inside its ``with`` block are drawn as rows under it.

    ``completed`` starts the bar part-way (a resumed run): the ETA is measured from what this run advances."""
    with _open(total, description, completed, enabled) as bar:
        token = _active.set(bar) if bar.progress is not None else None
        try:
            yield bar
        finally:
            if token is not None:
                _active.reset(token)


def progress_iter(
    items: Iterable[T],
    total: float | None = None,
    description: str = "",
    enabled: bool = True,
    weight: Callable[[T], float] | None = None,
) -> Iterator[T]:
    """Yield ``items`` with a bar that advances after each item is processed: by 1, or by ``weight(item)`` (e.g.
    ``weight=len`` over batches, with ``total`` the number of images)."""
    if not showing(enabled):
        yield from items
        return
    with _open(total, description, 0, True) as bar:
        for item in items:
            amount = 1 if weight is None else weight(item)
            yield item
            bar.advance(amount)
