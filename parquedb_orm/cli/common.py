"""What every `parquedb` command shares: where the database and the archive are, how a
read-only command opens them, how output is printed (rich on a terminal, plain or JSON
otherwise), and the two kinds of failure (usage: exit 2; runtime: exit 1)."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text
from sqlalchemy import URL, Engine, create_engine, make_url
from sqlalchemy.pool import NullPool

URL_ENV = "PARQUEDB_URL"
ARCHIVE_ENV = "PARQUEDB_ARCHIVE"


class UsageError(Exception):
    """The command line is wrong (exit code 2)."""


class CommandError(Exception):
    """The command could not do its job (exit code 1)."""


@dataclass
class Output:
    """Where a command prints: `json` for scripts; rich tables and progress bars only on a
    terminal (a pipe gets plain text, no ANSI codes, no progress)."""

    console: Console
    json: bool
    verbose: bool

    @property
    def terminal(self) -> bool:
        return self.console.is_terminal

    def emit_json(self, data: Any) -> None:
        print(json.dumps(data, indent=2, default=str, sort_keys=False))

    def line(self, text: str = "") -> None:
        if self.terminal:
            self.console.print(text, highlight=False, markup=False)  # "[demo]" is text, not a style
        else:
            print(text)

    def table(self, title: str | None, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        numeric = [
            i > 0 and all(_number(r[i]) or r[i] is None for r in rows) and any(_number(r[i]) for r in rows)
            for i in range(len(columns))
        ]
        table = Table(title=Text(title) if title else None, title_justify="left")
        for i, col in enumerate(columns):
            table.add_column(Text(col), justify="right" if numeric[i] else "left")
        for row in rows:
            table.add_row(*(Text(_cell(v)) for v in row))  # Text: no markup in values
        if self.terminal:
            self.console.print(table)
        else:  # plain columns: easy to grep, no box drawing for a log file
            if title:
                print(title)
            texts = [list(columns), *[[_cell(v) for v in row] for row in rows]]
            widths = [max(len(r[i]) for r in texts) for i in range(len(columns))]
            for n, r in enumerate(texts):
                pairs = enumerate(zip(r, widths, strict=True))
                cells = (c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in pairs)
                print("  ".join(cells).rstrip())
                if n == 0:
                    print("  ".join("-" * w for w in widths))

    @contextlib.contextmanager
    def progress(self) -> Iterator[Progress]:
        """A rich progress display, disabled (prints nothing) off a terminal or with --json."""
        progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
            transient=False,
            disable=not self.terminal or self.json,
        )
        with progress:
            yield progress


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.2f}"
    return str(value)


# --------------------------------------------------------------------------- URLs


def add_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", help=f"SQLAlchemy database URL (default: ${URL_ENV})")


def add_archive(parser: argparse.ArgumentParser, *, required_for: str | None = None) -> None:
    extra = f"; needed to {required_for}" if required_for else ""
    parser.add_argument("--archive", help=f"the store's archive folder or URI (default: ${ARCHIVE_ENV}{extra})")


def url_of(args: argparse.Namespace, positional: str | None = None) -> str:
    """--url, else a positional URL of the old form, else $PARQUEDB_URL."""
    given = [u for u in (getattr(args, "url", None), positional) if u]
    if len(given) == 2 and given[0] != given[1]:
        raise UsageError(f"two database URLs given: --url {given[0]} and {given[1]}")
    url = given[0] if given else os.environ.get(URL_ENV)
    if not url:
        raise UsageError(f"give a database URL with --url URL or set ${URL_ENV}")
    args.resolved_url = url  # for the error line of a failure later on
    return url


def archive_of(args: argparse.Namespace) -> str | None:
    return getattr(args, "archive", None) or os.environ.get(ARCHIVE_ENV) or None


def parse_url(url: str) -> URL:
    """The URL, checked: a usage error names what a URL looks like. A bare `postgresql://`
    or `mysql://` means SQLAlchemy's default driver; when that one is missing and ours is
    installed, ours is used (psycopg 3, PyMySQL)."""
    if "://" not in url:
        raise UsageError(
            f"invalid database URL {url!r}: expected e.g. sqlite:///app.db or postgresql+psycopg://host/db"
        )
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise UsageError(f"invalid database URL {url!r}: {exc}") from None
    backend = parsed.get_backend_name()
    if "+" not in parsed.drivername:
        for name, default, ours in (
            ("postgresql", "psycopg2", "psycopg"),
            ("mysql", "MySQLdb", "pymysql"),
            ("mariadb", "MySQLdb", "pymysql"),
        ):
            if backend == name and not _importable(default) and _importable(ours):
                parsed = parsed.set(drivername=f"{name}+{ours}")
    try:
        parsed.get_dialect()
    except Exception as exc:  # unknown backend or driver
        raise UsageError(f"invalid database URL {url!r}: {exc}") from None
    return parsed


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def sqlite_path(url: URL) -> Path | None:
    """The file of a SQLite file URL; None for other databases and in-memory SQLite."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database or ""
    if database in ("", ":memory:") or url.query.get("mode") == "memory":
        return None
    if database.startswith("file:"):
        if "mode=memory" in database:
            return None
        database = database[len("file:") :].split("?", 1)[0]
    return Path(database)


def require_existing(url: URL) -> None:
    """A read-only command on a SQLite file that does not exist says so, creating nothing."""
    path = sqlite_path(url)
    if path is not None and not path.is_file():
        raise CommandError(f"no database at {path} (nothing was created)")


def readonly_engine(url: URL) -> Engine:
    """An engine that cannot write: a SQLite file opened with `mode=ro` (it must exist);
    a server database as given (the commands using it only read)."""
    path = sqlite_path(url)
    if path is None:
        return create_engine(url, poolclass=NullPool)
    require_existing(url)
    # mode=ro still creates the -wal and -shm files of a WAL database when they are not
    # there. They are missing only when no connection is open (the last one to close
    # checkpoints and removes them): the file alone is then the whole database, read as
    # immutable. A writer that opens meanwhile appends to its WAL, not to this file.
    wal = Path(f"{path}-wal")
    uri = path.resolve().as_uri() + ("?mode=ro" if wal.exists() else "?mode=ro&immutable=1")
    return create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True), poolclass=NullPool)


def describe_db_error(exc: BaseException, url: URL) -> str:
    """One line for a driver error: what failed and where (the password hidden)."""
    where = url.render_as_string(hide_password=True)
    orig = getattr(exc, "orig", None) or exc
    text = " ".join(str(orig).split())
    return f"cannot use the database {where}: {text}"
