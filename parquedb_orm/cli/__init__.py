"""`parquedb`: the command line of parquedb-orm (docs/cli.md).

    parquedb demo                      # a small workload, what it cost, next to two other layouts
    parquedb upgrade --url URL [REV]   # migrations: upgrade / downgrade / current / heads
    parquedb flush --url URL --archive DIR
    parquedb stats | inspect NS/ID | export --to DIR | sql "SELECT ..."
    parquedb bench                     # the demo's workload, ten times bigger

Every command takes --url (default $PARQUEDB_URL), --archive where it needs the archive
(default $PARQUEDB_ARCHIVE), --json where it prints data, and -v for the libraries' logs.
Usage errors exit with 2, failures with 1; either prints one line, never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from parquedb_orm.cli import demo, schema, store
from parquedb_orm.cli.common import CommandError, Output, UsageError, describe_db_error, parse_url

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="store_true", help="show the libraries' log lines (Alembic...)")
    common.add_argument("--json", action="store_true", help="print the result as JSON (for scripts)")
    parser = argparse.ArgumentParser(
        prog="parquedb",
        description="parquedb-orm: an event store on SQL with a Parquet archive. "
        "Every command takes --url (or $PARQUEDB_URL).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.register(sub, [common])
    schema.register(sub, [common])
    store.register(sub, [common])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    args = parser.parse_args(words)  # exits 2 with argparse's message on a usage error
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr
    )
    quieted = {name: logging.getLogger(name).level for name in ("alembic", "parquedb_orm")}
    if not args.verbose:  # the library's one-line note of the engine's durability, Alembic's steps
        for name in quieted:
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        return _run(args, Output(Console(), json=args.json, verbose=args.verbose))
    finally:  # main() called in a process that goes on (tests, an app) leaves its loggers as they were
        for name, level in quieted.items():
            logging.getLogger(name).setLevel(level)


def _run(args: argparse.Namespace, out: Output) -> int:
    prefix = f"parquedb {args.command}: error:"
    try:
        code: int = args.func(args, out)
        return code
    except UsageError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 2
    except CommandError as exc:
        print(f"{prefix} {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `parquedb ... | head`: the reader left, nothing to say
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"{prefix} interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a CLI: one clear line, not a traceback (-v shows it)
        if args.verbose:
            logging.getLogger("parquedb").exception("failed")
        print(f"{prefix} {_describe(exc, getattr(args, 'resolved_url', None))}", file=sys.stderr)
        return 1


def _describe(exc: BaseException, raw: str | None) -> str:
    """One line for a failure: driver errors name the database (password hidden); our typed
    errors and Alembic's (e.g. an unknown revision) are already worded for the user."""
    from alembic.util import CommandError as AlembicError
    from sqlalchemy.exc import DBAPIError

    from parquedb_orm.errors import ParqueDBError

    if isinstance(exc, DBAPIError):
        if raw:
            try:
                return describe_db_error(exc, parse_url(raw))
            except UsageError:
                pass
        return " ".join(str(exc.orig or exc).split())
    if isinstance(exc, (ParqueDBError, AlembicError)):
        return " ".join(str(exc).split())
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


if __name__ == "__main__":
    sys.exit(main())
