"""The process's Arrow allocator, and handing freed memory back to the OS.

Arrow's default pool on Linux wheels is mimalloc. Buffers that Arrow's worker threads
(Parquet decoding, dataset scans) allocated stay cached in those threads' heaps after
they are freed; `release_unused()` only collects the calling thread's. Measured on a
1M-entity compaction: 109 MiB outside Python's heap stayed in RSS with mimalloc, 14 MiB
with the system allocator (docs/scaling.md).
So, unless the user chose a pool (the `ARROW_DEFAULT_MEMORY_POOL` environment variable,
which Arrow itself reads), the first archive opened in a process makes the system
allocator Arrow's default pool. It is process-wide: other Arrow users in the process get
it too, which docs/configuration.md says.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import threading
from collections.abc import Callable

import pyarrow as pa

log = logging.getLogger("parquedb_orm")

_lock = threading.Lock()
_chosen = False


def choose_pool() -> None:
    """Make the system allocator Arrow's default pool, once per process, unless the user
    chose one through ARROW_DEFAULT_MEMORY_POOL."""
    global _chosen
    with _lock:
        if _chosen:
            return
        _chosen = True
        if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            return
        if pa.default_memory_pool().backend_name == "system":
            return
        pa.set_memory_pool(pa.system_memory_pool())
        log.debug("parquedb_orm: Arrow's default memory pool is now the system allocator")


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


_trim = _malloc_trim()


def release() -> None:
    """After a flush or a merge: what Arrow's pool and the C allocator keep of freed memory
    goes back to the OS, so the process's RSS does not stay at the operation's peak
    (measured at 1M entities: -25 MiB from malloc_trim after a flush)."""
    pa.default_memory_pool().release_unused()
    if _trim is not None:
        _trim(0)
