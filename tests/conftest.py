from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parent
# The row meter is a development tool outside the package (tools/meter, distribution
# parquedb-meter): the tests import it from the checkout without installing it, ahead
# of any installed copy.
_METER = _TESTS.parent / "tools" / "meter"
for _path in (str(_TESTS), str(_METER)):
    if _path in sys.path:
        sys.path.remove(_path)
    sys.path.insert(0, _path)

import threading  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

from parquedb_orm.engine import setup  # noqa: E402
from parquedb_orm.orm import install as orm  # noqa: E402

# `pytest --hypothesis-profile=long`: the long run of tests/test_stateful.py (which uses its
# own small counts under any other profile); registered here, before the plugin loads it
settings.register_profile("long", max_examples=200, stateful_step_count=30, deadline=None)


def _flush_threads() -> set[threading.Thread]:
    return {
        t
        for t in threading.enumerate()
        if t.is_alive() and (t.name == "parquedb-flush" or isinstance(t, threading.Timer))
    }


@pytest.fixture(autouse=True)
def nothing_leaks() -> Iterator[None]:
    """Every test closes what it opened: no runtime left registered, no session bridge (so
    no unit of work waiting for a COMMIT), no flush thread or timer."""
    runtimes, bridges, threads = set(setup._runtimes), set(orm._bridges), _flush_threads()
    yield
    left_runtimes = {k: rt for k, rt in setup._runtimes.items() if k not in runtimes}
    left_bridges = {k: b for k, b in orm._bridges.items() if k not in bridges}
    pending = [txn for b in orm._bridges.values() for txn in b.pending.values() if txn() is not None]
    for bridge in left_bridges.values():  # clean up, so one leak does not fail the next test
        bridge.handle.close()
    for rt in left_runtimes.values():
        while rt in setup._runtimes.values():
            setup.release_runtime(rt)
    left_threads = {t for t in _flush_threads() - threads if t.is_alive()}
    assert not left_runtimes, f"runtimes left registered: {[rt.engine.url for rt in left_runtimes.values()]}"
    assert not left_bridges, "sessionmakers left enabled (close the handle enable() returned)"
    assert not pending, f"units of work waiting for a COMMIT: {pending}"
    assert not left_threads, f"flush threads left running: {left_threads}"
