"""Progress of long operations: nothing shown for an empty task (a fresh database)."""

from __future__ import annotations

import logging

import pytest

from parquedb_orm.sql import progress as progress_module


def test_an_empty_task_shows_nothing(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress_module, "_is_tty", lambda: True)  # would draw a rich bar
    with caplog.at_level(logging.INFO, logger="parquedb_orm.migrate"), progress_module.progress("scan", 0) as bar:
        bar.advance(0)
    assert type(bar).__name__ == "_Silent" and not caplog.records


def test_a_task_with_rows_logs_off_a_terminal(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="parquedb_orm.migrate"), progress_module.progress("scan", 3) as bar:
        bar.advance(3)
    assert [r.getMessage() for r in caplog.records][-1] == "scan: 3/3 rows (100%)"
