"""Progress of long operations (migrations of large tables): rows done / total.

A rich progress bar when stderr is a terminal; otherwise plain `logging` lines, so
CI logs and `alembic upgrade` run from a deploy script still show how far it got.
Log lines are throttled (one per `LOG_EVERY` seconds, plus the last one) so a
migration of millions of rows does not flood the log.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

logger = logging.getLogger("parquedb_orm.migrate")

LOG_EVERY = 2.0  # seconds between two log lines of the same task


class Progress(Protocol):
    def advance(self, rows: int) -> None: ...


class _LogProgress:
    def __init__(self, description: str, total: int | None, unit: str) -> None:
        self.description = description
        self.total = total
        self.unit = unit
        self.done = 0
        self._last_log = 0.0

    def advance(self, rows: int) -> None:
        self.done += rows
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY:
            self._last_log = now
            self._log()

    def _log(self) -> None:
        if self.total:
            pct = 100.0 * self.done / self.total
            logger.info("%s: %d/%d %s (%.0f%%)", self.description, self.done, self.total, self.unit, pct)
        else:
            logger.info("%s: %d %s", self.description, self.done, self.unit)

    def close(self) -> None:
        self._log()


class _RichProgress:
    def __init__(self, description: str, total: int | None, unit: str) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn(unit),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
            transient=False,
        )
        self._bar.start()
        self._task = self._bar.add_task(description, total=total)

    def advance(self, rows: int) -> None:
        self._bar.advance(self._task, rows)

    def close(self) -> None:
        self._bar.stop()


class _Silent:
    def advance(self, rows: int) -> None:
        return None


def _is_tty() -> bool:
    isatty = getattr(sys.stderr, "isatty", None)
    return bool(isatty and isatty())


@contextmanager
def progress(description: str, total: int | None, *, unit: str = "rows") -> Iterator[Progress]:
    """Report `advance(n)` calls as rows done out of `total` (None: unknown total)."""
    if total == 0:  # nothing to do (a fresh database): no bar, no log line
        yield _Silent()
        return
    reporter: _LogProgress | _RichProgress
    reporter = _RichProgress(description, total, unit) if _is_tty() else _LogProgress(description, total, unit)
    try:
        yield reporter
    finally:
        reporter.close()
