"""`parquedb upgrade | downgrade | current | heads`: the store's schema migrations."""

from __future__ import annotations

import argparse

from sqlalchemy import URL

from parquedb_orm import migrate
from parquedb_orm.cli.common import (
    Output,
    UsageError,
    add_url,
    parse_url,
    readonly_engine,
    require_existing,
    sqlite_path,
    url_of,
)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], parents: list[argparse.ArgumentParser]) -> None:
    up = sub.add_parser(
        "upgrade",
        parents=parents,
        help="apply the store's migrations (default: up to the newest revision)",
        description="Apply the store's migrations to a database (creating a SQLite file if needed).",
    )
    add_url(up)
    up.add_argument(
        "args",
        nargs="*",
        metavar="[URL] [REVISION]",
        help="target revision (default: heads); a URL here (old form) is accepted when it contains ://",
    )
    up.set_defaults(func=upgrade)

    down = sub.add_parser(
        "downgrade",
        parents=parents,
        help="revert the store's migrations down to a revision",
        description="Revert the store's migrations down to a revision: pq0001, base, -1, ...",
    )
    add_url(down)
    down.add_argument("args", nargs="+", metavar="[URL] REVISION", help="target revision: pq0001, base, -1, ...")
    down.set_defaults(func=downgrade)

    cur = sub.add_parser(
        "current",
        parents=parents,
        help="print the revision the database is at (read-only)",
        description="Print the store's revision recorded in the database; reads only, creates nothing.",
    )
    add_url(cur)
    cur.add_argument("args", nargs="*", metavar="URL", help="old form of --url (a URL containing ://)")
    cur.set_defaults(func=current)

    heads = sub.add_parser(
        "heads",
        parents=parents,
        help="print the newest revision this version ships",
        description="Print the newest revision(s) of the store's schema shipped with this version.",
    )
    heads.set_defaults(func=show_heads)


def _split(args: argparse.Namespace, most: int, least: int) -> tuple[str | None, list[str]]:
    """The old positional form `<url> [revision]`: a first word with :// is the URL."""
    words: list[str] = list(args.args)
    url = words.pop(0) if words and "://" in words[0] else None
    if not least <= len(words) <= most:
        what = "a revision" if most == least == 1 else f"at most {most} revision" if most else "no revision"
        raise UsageError(f"expected {what}, got {' '.join(words) or 'none'}")
    return url, words


def upgrade(args: argparse.Namespace, out: Output) -> int:
    positional, words = _split(args, 1, 0)
    url = parse_url(url_of(args, positional))
    target = words[0] if words else "heads"
    before = _current(url) if _exists(url) else ()
    migrate.upgrade(url, target)
    after = migrate.current(url)
    _report(out, "upgrade", before, after)
    return 0


def downgrade(args: argparse.Namespace, out: Output) -> int:
    positional, words = _split(args, 1, 1)
    url = parse_url(url_of(args, positional))
    require_existing(url)
    before = _current(url)
    migrate.downgrade(url, words[0])
    after = migrate.current(url)
    _report(out, "downgrade", before, after)
    return 0


def _exists(url: URL) -> bool:
    path = sqlite_path(url)
    return path is None or path.is_file()


def _current(url: URL) -> tuple[str, ...]:
    engine = readonly_engine(url)
    try:
        return migrate.current(engine)
    finally:
        engine.dispose()


def _report(out: Output, what: str, before: tuple[str, ...], after: tuple[str, ...]) -> None:
    if out.json:
        out.emit_json({"command": what, "from": list(before), "to": list(after)})
    else:
        out.line(f"{what}: {', '.join(before) or '(none)'} -> {', '.join(after) or '(none)'}")


def current(args: argparse.Namespace, out: Output) -> int:
    positional, _words = _split(args, 0, 0)
    url = parse_url(url_of(args, positional))
    at = _current(url)
    newest = set(migrate.heads())
    if out.json:
        out.emit_json({"revisions": list(at), "at_head": bool(at) and set(at) == newest, "heads": sorted(newest)})
        return 0
    if not at:
        out.line("(none)")
    for rev in at:
        out.line(f"{rev} (head)" if rev in newest else rev)
    return 0


def show_heads(args: argparse.Namespace, out: Output) -> int:
    revs = list(migrate.heads())
    if out.json:
        out.emit_json({"heads": revs})
    else:
        for rev in revs:
            out.line(rev)
    return 0
