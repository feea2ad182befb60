"""When to flush: `FlushPolicy` and the scheduler that applies it after every commit.

The decision uses only the in-memory unflushed count (no SQL): at `max_events` flush now;
at `min_events` make sure a flush happens within `max_interval` seconds (a timer thread,
the analogue of a Durable Object alarm). A new process schedules one flush at start, so
events left pending by a previous process are flushed too.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from parquedb_orm.errors import ValidationError

if TYPE_CHECKING:
    from parquedb_orm.archive.flush import Flusher, FlushResult

log = logging.getLogger("parquedb_orm.archive.flush")

MODES = ("inline", "background", "manual")


@dataclass(frozen=True)
class FlushPolicy:
    """`mode`: inline (the committing call flushes at max_events), background (a worker
    thread flushes; commits never wait for Parquet) or manual (only `flush()`).
    `compact_after`: merge a namespace's files of one kind once there are more than this."""

    min_events: int = 100
    max_events: int = 10_000
    max_interval: float = 60.0
    mode: str = "inline"
    compact_after: int = 32

    def __post_init__(self) -> None:
        for name in ("min_events", "max_events", "compact_after"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValidationError(f"FlushPolicy.{name} must be a positive int, got {value!r}")
        if self.min_events > self.max_events:
            raise ValidationError("FlushPolicy.min_events must not exceed max_events")
        if (
            isinstance(self.max_interval, bool)
            or not isinstance(self.max_interval, (int, float))
            or self.max_interval <= 0
        ):
            raise ValidationError(f"FlushPolicy.max_interval must be a positive number, got {self.max_interval!r}")
        if self.mode not in MODES:
            raise ValidationError(f"FlushPolicy.mode must be one of {MODES}, got {self.mode!r}")


class CommitFeed(Protocol):
    """What the scheduler needs of the engine: the unflushed count and a call per commit."""

    @property
    def unflushed(self) -> int: ...

    def subscribe(self, hook: Callable[[int], None]) -> None: ...

    def unsubscribe(self, hook: Callable[[int], None]) -> None: ...


class Scheduler:
    """Applies a policy to one store; subscribes to its commits.

    `serial`: an in-memory SQLite database is one connection shared by every thread: a
    flush from another thread would interleave with the caller's transaction, so there
    every flush runs in the committing thread (the interval is checked at commits)."""

    def __init__(self, feed: CommitFeed, flusher: Flusher, policy: FlushPolicy, *, serial: bool = False) -> None:
        self.rt = feed
        self.flusher = flusher
        self.policy = policy
        self._lock = threading.Lock()
        #: held while a flush runs, in whichever thread: close() waits on it (re-entrant,
        #: so a close() from inside a flush's own thread cannot deadlock)
        self._running = threading.RLock()
        self._timer: threading.Timer | None = None
        self._worker: threading.Thread | None = None
        self._busy = False  # a background worker is flushing (or about to)
        self._again = False  # a commit asked for a flush while it was
        self._closed = False
        self.last_error: BaseException | None = None
        self.last_result: FlushResult | None = None
        self.flushes = 0
        self.serial = serial
        self._pending_since: float | None = None
        # after a failed flush, commits stop retrying it until this time (backoff doubles
        # from 1 s up to max_interval): a persistent error must not slow every commit
        self._retry_at = 0.0
        self._backoff = 0.0

    def start(self) -> None:
        self.rt.subscribe(self.on_commit)
        if self.policy.mode != "manual" and not self.serial:
            self._arm(0.0)  # flush whatever a previous process left pending

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            worker = self._worker
        self.rt.unsubscribe(self.on_commit)
        if worker is not None and worker is not threading.current_thread():
            worker.join()
        with self._running:  # a timer-fired or inline flush still in progress
            pass

    # ------------------------------------------------------------------ decisions
    def on_commit(self, _count: int) -> None:
        if self.policy.mode == "manual":
            return
        pending = self.rt.unflushed
        if self._backoff and time.monotonic() < self._retry_at:
            if pending >= self.policy.min_events and not self.serial:
                self._arm(max(0.0, self._retry_at - time.monotonic()))
            return
        if self.serial:
            now = time.monotonic()
            if pending < self.policy.min_events:
                self._pending_since = None
                return
            if self._pending_since is None:
                self._pending_since = now
            if pending >= self.policy.max_events or now - self._pending_since >= self.policy.max_interval:
                self._pending_since = None
                self.run()
            return
        if pending >= self.policy.max_events:
            if self.policy.mode == "inline":
                self.run()
            else:
                self._background()
        elif pending >= self.policy.min_events:
            self._arm(self.policy.max_interval)

    def _arm(self, delay: float) -> None:
        with self._lock:
            if self._closed or self._timer is not None:
                return  # a flush is already due no later than the policy asks
            timer = threading.Timer(delay, self._fire)
            timer.daemon = True
            self._timer = timer
        timer.start()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        self.run()

    def _background(self) -> None:
        with self._lock:
            if self._closed:
                return
            if self._busy:  # the running flush may have read the WAL before this commit:
                self._again = True  # the worker runs once more, rather than leave it waiting
                return
            self._busy = True
            worker = threading.Thread(target=self._work, name="parquedb-flush", daemon=True)
            self._worker = worker
        worker.start()

    def _work(self) -> None:
        while True:
            self.run()
            with self._lock:  # the same lock _background decides under: no request is lost
                if not self._again or self._closed:
                    self._busy = False
                    return
                self._again = False

    def run(self) -> FlushResult | None:
        """Flush now (and compact if due); errors are logged and kept, never raised here:
        the events stay safe in the WAL and the next flush retries."""
        with self._running:
            if self._closed:
                return None
            return self._run()

    def flush_now(self) -> FlushResult:
        """A caller's flush (`db.flush()`): counted in `flushes` / `last_result` /
        `last_error` like the policy's, but its error is raised to that caller."""
        with self._running:
            try:
                result = self._flush_and_compact()
            except Exception as exc:
                self.last_error = exc
                raise
            return result

    def _flush_and_compact(self) -> FlushResult:
        t0 = time.perf_counter()
        result = self.flusher.flush()
        self.flusher.compact_due(self.policy.compact_after, result.namespaces)
        self.last_result = result
        self.flushes += 1
        self._backoff = 0.0
        log.debug("flushed %d events in %.3fs", result.events + result.rel_events, time.perf_counter() - t0)
        return result

    def _run(self) -> FlushResult | None:
        try:
            return self._flush_and_compact()
        except Exception as exc:  # a failed flush must not fail the caller's commit
            self.last_error = exc
            self._backoff = min(max(1.0, self._backoff * 2), self.policy.max_interval)
            self._retry_at = time.monotonic() + self._backoff
            log.exception("parquedb-orm flush failed; events remain in the WAL and will be retried")
            return None
