"""`parquedb` command line: migrate a database to the store's schema.

    parquedb upgrade  <url> [revision]     # default: heads (the newest schema)
    parquedb downgrade <url> <revision>    # e.g. pq0001, base, -1
    parquedb current  <url>                # prints e.g. "pq0004 (head)"
    parquedb heads                         # the newest revision this version ships

<url> may be omitted when $PARQUEDB_URL is set.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from parquedb_orm import migrate


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parquedb", description="Schema migrations of parquedb_orm.")
    parser.add_argument("-q", "--quiet", action="store_true", help="only print errors")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("upgrade", help="apply migrations (default: up to the newest revision)")
    up.add_argument("url", nargs="?", help="SQLAlchemy URL (default: $PARQUEDB_URL)")
    up.add_argument("revision", nargs="?", default="heads", help="target revision (default: heads)")

    down = sub.add_parser("downgrade", help="revert migrations down to a revision")
    down.add_argument("url", help="SQLAlchemy URL")
    down.add_argument("revision", help="target revision: pq0001, base, -1, ...")

    cur = sub.add_parser("current", help="print the revision the database is at")
    cur.add_argument("url", nargs="?", help="SQLAlchemy URL (default: $PARQUEDB_URL)")

    sub.add_parser("heads", help="print the newest revision shipped with this version")
    return parser


def _url(value: str | None, parser: argparse.ArgumentParser) -> str:
    url = value or os.environ.get("PARQUEDB_URL")
    if not url:
        parser.error("give a database URL or set $PARQUEDB_URL")
    return url


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)  # setup chatter
    try:
        if args.command == "upgrade":
            migrate.upgrade(_url(args.url, parser), args.revision)
        elif args.command == "downgrade":
            migrate.downgrade(args.url, args.revision)
        elif args.command == "current":
            at = migrate.current(_url(args.url, parser))
            newest = set(migrate.heads())
            if not at:
                print("(none)")
            for rev in at:
                print(f"{rev} (head)" if rev in newest else rev)
        else:
            for rev in migrate.heads():
                print(rev)
    except Exception as exc:  # a CLI: one clear line, not a traceback
        print(f"parquedb {args.command}: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
