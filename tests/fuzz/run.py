"""Running the targets: the tolerant check used by the bounded tests, and the long
on-demand run (`python -m tests.fuzz --seconds N`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from . import corpus, known, seeds, strategies, targets
from .targets import Violation

HEALTH = list(HealthCheck)


def bounded(max_examples: int) -> settings:
    """The normal suite's settings: deterministic (the same examples each run), no database."""
    return settings(
        max_examples=max_examples, deadline=None, derandomize=True, database=None, suppress_health_check=HEALTH
    )


def tolerant(check: Callable[[Any], None], seen: set[tuple[str, ...]] | None = None) -> Callable[[Any], None]:
    """`check`, with the known failures (known.SIGNATURES, and `seen`: failures already
    saved by this run) let through, so a run keeps looking for other ones."""

    def run(value: Any) -> None:
        try:
            check(value)
        except Violation as v:
            if known.known(v) is None and (seen is None or key(v) not in seen):
                raise

    return run


def key(v: Violation) -> tuple[str, ...]:
    """What makes two violations the same finding: the target, the call, the exception type."""
    where = str(v).split(" raised ", 1)[0]
    return (v.target, where, type(v.exc).__name__ if v.exc is not None else "-")


def _violations(exc: BaseException) -> Iterator[Violation]:
    if isinstance(exc, Violation):
        yield exc
    for inner in getattr(exc, "exceptions", ()):  # hypothesis' ExceptionGroups (several or flaky failures)
        yield from _violations(inner)
    if exc.__cause__ is not None and exc.__cause__ is not exc:
        yield from _violations(exc.__cause__)


def _api_check(api: targets.Api) -> Callable[[tuple[str, Any]], None]:
    def check(item: tuple[str, Any]) -> None:
        try:
            targets.check_api(api, item[1], item[0])
        except Violation as v:
            v.value = item  # (kind, input): saved under the kind's corpus
            raise

    return check


def _run_target(name: str, seconds: float, chunk: int, out: Any) -> int:
    seen: set[tuple[str, ...]] = set()
    api = targets.Api() if name == "api" else None
    if api is not None:
        strategy: st.SearchStrategy[Any] = st.one_of(
            strategies.filter_inputs().map(lambda v: ("filters", v)),
            strategies.update_inputs().map(lambda v: ("operators", v)),
        )
        check: Callable[[Any], None] = _api_check(api)
    else:
        strategy = strategies.STRATEGIES[name]()
        check = targets.CHECKS[name]
    counts: Counter[str] = Counter()
    inner = tolerant(check, seen)  # `seen` grows as failures are saved

    @settings(max_examples=chunk, deadline=None, database=None, derandomize=False, suppress_health_check=HEALTH)
    @given(strategy)
    def one(value: Any) -> None:
        counts["examples"] += 1
        inner(value)

    start = time.monotonic()
    try:
        while time.monotonic() - start < seconds:  # each call: `chunk` new random examples
            try:
                one()
            except Exception as exc:
                vs = list(_violations(exc))
                if not vs:
                    raise
                for v in vs:
                    target, value = v.value if name == "api" else (name, v.value)
                    path = corpus.save(target, value)
                    seen.add(key(v))
                    print(f"NEW [{name}] {str(v)[:500]}\n    saved {path}", file=out, flush=True)
    finally:
        if api is not None:
            api.close()
    took = time.monotonic() - start
    print(f"{name}: {counts['examples']} examples in {took:.1f} s, {len(seen)} new failure(s)", file=out, flush=True)
    return len(seen)


def long_run(names: list[str], seconds: float, chunk: int, out: Any = sys.stdout) -> int:
    """Each target for `seconds`, in runs of `chunk` random examples; a new failure is
    shrunk by hypothesis and its input saved into the corpus (found-<hash>), and further
    instances of it are let through. Returns the number of new failures."""
    return sum(_run_target(name, seconds, chunk, out) for name in names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0, help="time per target (default 60)")
    parser.add_argument(
        "--target",
        action="append",
        choices=[*targets.CHECKS, "api"],
        help="a target to run (repeatable; default: all)",
    )
    parser.add_argument("--chunk", type=int, default=2000, help="examples per hypothesis run (default 2000)")
    parser.add_argument("--write-seeds", action="store_true", help="rewrite the seed and known-failure corpus files")
    args = parser.parse_args(argv)
    if args.write_seeds:
        for path in seeds.write():
            print(path)
        return 0
    names = args.target or [*targets.CHECKS, "api"]
    found = long_run(names, args.seconds, args.chunk)
    if found:
        print(
            f"{found} new failing input(s) saved under {corpus.CORPUS}: add them to tests/fuzz/known.py "
            "(xfail) or fix the library",
            file=sys.stdout,
        )
    return 1 if found else 0
