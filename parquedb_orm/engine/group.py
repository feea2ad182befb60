"""Group commit for the `ParqueDB` facade.

Threads committing at the same time share one SQL transaction and one WAL row per
namespace: the first to arrive becomes the leader and commits everything queued; the
others wait and return only once their events are committed (or with their own error).
Inside an application's own session, batching stays per commit (its rows must commit
together): this module is not used there.
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from parquedb_orm.core.events import Versioned
from parquedb_orm.core.unit import UnitOfWork
from parquedb_orm.engine.runtime import Runtime
from parquedb_orm.errors import ParqueDBError, VersionConflictError
from parquedb_orm.sql import dialects

if TYPE_CHECKING:
    from sqlalchemy import Connection

#: seconds a kept commit connection may sit idle before it goes back to the pool
HOLD_IDLE = 5.0


@dataclass
class _Pending:
    uow: UnitOfWork
    done: bool = False
    error: BaseException | None = None


#: runs of one commit the server may roll back to break deadlocks before its error surfaces
DEADLOCK_ATTEMPTS = 8


@dataclass
class GroupStats:
    groups: int = 0
    units: int = 0
    rows_saved: int = 0
    #: commits run again after the server rolled them back to break a deadlock
    deadlock_retries: int = 0


def merge(units: list[UnitOfWork]) -> UnitOfWork:
    """One unit standing for several: events in arrival order, first base versions."""
    out = UnitOfWork()
    for u in units:
        for ns, floor in u.id_floors.items():
            out.id_floors[ns] = max(out.id_floors.get(ns, 0), floor)
        for ns, evs in u.events.items():
            out.events.setdefault(ns, []).extend(evs)
        for ns, revs in u.rel_events.items():
            out.rel_events.setdefault(ns, []).extend(revs)
        for key, base in u.base_versions.items():
            if key not in out.base_versions and key not in out.overlay:
                out.base_versions[key] = base
        out.overlay.update(u.overlay)
        out.links.update(u.links)
        for ns, ranges in u.local_ids.items():
            out.local_ids.setdefault(ns, []).extend(ranges)
        out.bulk.extend(u.bulk)
    return out


class GroupCommitter:
    def __init__(self, runtime: Runtime, *, enabled: bool = True, max_delay: float = 0.0005) -> None:
        self.rt = runtime
        self.enabled = enabled
        #: how long a leader may wait for writers still building their operation
        #: (like PostgreSQL's commit_delay, only when others are known to be coming).
        #: Short: the waiting leader's thread does nothing while its followers build, and
        #: 2 ms cost 8 threads about a third of their ops/s for ~0.3 more units a group
        #: (CPU-bound Python: the GIL lets them build one at a time anyway)
        self.max_delay = max_delay
        # one lock, two conditions: writers waiting for their group to be committed wait on
        # `_done`; only a leader waiting for writers still building waits on `_arrived`.
        # (One condition for both woke every waiting writer at each arrival, 8 threads:
        # ~7 wake-ups, GIL hand-offs and re-waits per commit, for nothing.)
        self._mutex = threading.Lock()
        self._done = threading.Condition(self._mutex)
        self._arrived = threading.Condition(self._mutex)
        self._queue: list[_Pending] = []
        self._leader = False
        self._building = 0
        self._last_group = 0
        self.stats = GroupStats()
        self._held: Connection | None = None
        self._held_at = 0.0

    def begin(self) -> None:
        """A writer starts building an operation (lets a leader wait for it briefly)."""
        with self._mutex:
            self._building += 1

    def commit(self, uow: UnitOfWork | None) -> None:
        """Commit `uow`, possibly with others; returns once it is committed (as durable as
        the engine's settings make it: docs/durability.md). Every `begin()` is matched by
        one `commit()` (with None when the operation failed)."""
        me = _Pending(uow) if uow is not None and not uow.empty else None
        with self._mutex:
            self._building -= 1
            if me is None:
                self._arrived.notify()  # a leader waiting for builders counts again
                return
            if not self.enabled:
                batch = [me]
            else:
                self._queue.append(me)
                self._arrived.notify()
                while self._leader and not me.done:
                    self._done.wait()
                if me.done:
                    if me.error is not None:
                        raise me.error
                    return
                self._leader = True
                # writers that just returned from the previous group are about to come back:
                # under contention (the last group was shared) give them a moment to enqueue
                now = time.monotonic()
                deadline = now + self.max_delay
                settle = now + (self.max_delay / 2 if self._last_group > 1 else 0.0)
                while (left := deadline - time.monotonic()) > 0 and (self._building > 0 or time.monotonic() < settle):
                    self._arrived.wait(min(left, max(settle - time.monotonic(), 0.0002)))
                batch, self._queue = self._queue, []
                self._last_group = len(batch)
        if not self.enabled:
            self._commit_batch(batch)
            if me.error is not None:
                raise me.error
            return
        try:
            self._commit_batch(batch)
        finally:
            with self._mutex:
                self._leader = False
                self._done.notify_all()
        if me.error is not None:
            raise me.error

    def exclusive(self, build: Callable[[], UnitOfWork]) -> None:
        """Build and commit a unit while no other commit of this process is in flight.

        Used to retry an operation that lost a race: with every earlier group finished,
        the caches it reads are current, so it cannot lose to this process again."""
        with self._mutex:
            while self._leader:
                self._done.wait()
            self._leader = True
        try:
            uow = build()
            if not uow.empty:
                self._commit_units([uow])
        finally:
            with self._mutex:
                self._leader = False
                self._done.notify_all()

    # ------------------------------------------------------------------ leader side
    def _admit(self, batch: list[_Pending]) -> list[_Pending]:
        """Units that conflict with an earlier unit of the same group fail alone."""
        seen: dict[tuple[str, str], int] = {}
        ok = []
        for p in batch:
            clash = next(((k, seen[k], b) for k, b in p.uow.base_versions.items() if k in seen and seen[k] != b), None)
            if clash is not None:
                key, now, base = clash
                p.error = VersionConflictError(
                    f"{key[0]}/{key[1]} changed concurrently (now version {now}, this call read {base})",
                    expected=base,
                    actual=now,
                )
                p.done = True
                continue
            for key, (version, _s) in p.uow.overlay.items():
                seen[key] = version
            ok.append(p)
        return ok

    def _commit_batch(self, batch: list[_Pending]) -> None:
        admitted = self._admit(batch) if len(batch) > 1 else batch  # one unit cannot clash with itself
        if not admitted:
            return
        try:
            self._commit_units([p.uow for p in admitted])
            for p in admitted:
                p.done = True
        except VersionConflictError:
            if len(admitted) == 1:
                admitted[0].error, admitted[0].done = _current_error(), True
                return
            for p in admitted:  # someone outside the group won: find out who alone fails
                try:
                    self._commit_units([p.uow])
                except BaseException as exc:
                    p.error = exc
                p.done = True
        except Exception as exc:
            if len(admitted) == 1 or not isinstance(exc, ParqueDBError):
                for p in admitted:
                    p.error, p.done = exc, True
                return
            for p in admitted:  # one unit was refused (an oversized event): it alone fails
                try:
                    self._commit_units([p.uow])
                except BaseException as exc1:
                    p.error = exc1
                p.done = True
        except BaseException as exc:
            for p in admitted:
                p.error, p.done = exc, True

    def _connection(self) -> Connection:
        """The leader's connection, kept between commits: a checkout from the pool and back
        costs about as much as the commit's own INSERT. Only leaders use it, one at a time;
        one idle longer than HOLD_IDLE goes back to the pool (its pre-ping and recycling)."""
        now = time.monotonic()
        conn = self._held
        if conn is not None and (conn.closed or conn.invalidated or now - self._held_at > HOLD_IDLE):
            self.release()
            conn = None
        if conn is None:
            conn = self._held = self.rt.engine.connect()
        self._held_at = now
        return conn

    def release(self) -> None:
        """Give the kept connection back to the pool (the handle closes, or it failed)."""
        conn, self._held = self._held, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection: the pool discards it
                conn.close()

    def _commit_units(self, units: list[UnitOfWork]) -> None:
        merged = units[0] if len(units) == 1 else merge(units)
        for attempt in range(DEADLOCK_ATTEMPTS):
            try:
                self._commit_once(merged)
                break
            except Exception as exc:
                # the server rolled the whole transaction back to break a deadlock (InnoDB,
                # while processes switch to shared mode): nothing of it was written, and the
                # abort made its namespaces number from the table again
                if attempt == DEADLOCK_ATTEMPTS - 1 or not dialects.rolled_back_to_retry(exc):
                    raise
                self.stats.deadlock_retries += 1
                time.sleep(random.uniform(0, 0.002 * 2**attempt))  # jittered: the rivals part
        self.rt.committer.finish(merged)
        self.stats.groups += 1
        self.stats.units += len(units)

    def _commit_once(self, merged: UnitOfWork) -> None:
        held = self.enabled  # without group commit, several threads commit at once: each its own
        try:
            if held:
                conn = self._connection()
                try:
                    with conn.begin():
                        dialects.ensure_transaction(conn)
                        self.rt.committer.prepare(conn, merged)
                except BaseException:
                    self.release()  # whatever state it is in, the next commit starts afresh
                    raise
            else:
                with dialects.begin(self.rt.engine) as conn:
                    self.rt.committer.prepare(conn, merged)
        except BaseException:
            self.rt.committer.abort(merged)
            raise


def _current_error() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc


__all__ = ["GroupCommitter", "Versioned", "merge"]
