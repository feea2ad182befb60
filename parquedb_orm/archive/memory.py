"""The process's Arrow allocator, and handing freed memory back to the OS.

Arrow's default pool on Linux wheels is mimalloc. Memory that Arrow's worker threads
(Parquet decoding, dataset scans) allocated stays cached in those threads' heaps after it
is freed (`release_unused()` only collects the calling thread's), and Arrow's C++ code
(the Parquet reader, the dataset scanner) takes its buffers from the C++ default pool,
which `pa.set_memory_pool` does not change. Measured after the first flush at 1M
entities: a 1 GiB mimalloc region held 158 MiB of RSS with nothing allocated in it.

So, unless the user chose a pool (the `ARROW_DEFAULT_MEMORY_POOL` environment variable,
which Arrow reads once, on its first allocation), importing parquedb_orm makes the system
allocator Arrow's default for the process: the variable is set while pyarrow initialises
its pool and removed again (child processes do not inherit it). Where pyarrow had already
allocated (imported and used before parquedb_orm), only the Python-side default can still
change; docs/configuration.md tells users to set the variable themselves then.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from collections.abc import Callable

log = logging.getLogger("parquedb_orm")

_VAR = "ARROW_DEFAULT_MEMORY_POOL"


def _choose_pool() -> str:
    """Make the system allocator Arrow's default pool unless the user chose one; returns
    the backend in use."""
    if os.environ.get(_VAR):
        import pyarrow as pa

        return str(pa.default_memory_pool().backend_name)
    first = "pyarrow" not in sys.modules
    os.environ[_VAR] = "system"
    try:
        import pyarrow as pa

        backend = str(pa.default_memory_pool().backend_name)  # initialises the C++ default
    finally:
        del os.environ[_VAR]
    if backend != "system":  # pyarrow allocated before we were imported
        pa.set_memory_pool(pa.system_memory_pool())
        log.debug(
            "parquedb_orm: pyarrow was in use before parquedb_orm was imported (first=%s); set %s=system "
            "for Arrow's C++ code to use the system allocator too",
            first,
            _VAR,
        )
    return backend


BACKEND = _choose_pool()

import pyarrow as pa  # noqa: E402  (after the pool is chosen)


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def _malloc_trim(libc: ctypes.CDLL | None) -> Callable[[int], int] | None:
    try:
        fn = libc.malloc_trim if libc is not None else None
    except AttributeError:  # not glibc (musl, macOS): nothing to trim
        return None
    if fn is None:
        return None
    fn.argtypes = [ctypes.c_size_t]
    fn.restype = ctypes.c_int
    return fn


#: glibc's mallopt parameters (malloc.h) and the values fixed at import: glibc's own
#: initial ones (128 KiB)
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
THRESHOLD_BYTES = 128 * 1024
#: what a user sets to choose glibc's thresholds (or its dynamic ones) themselves
_GLIBC_VARS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def _fix_thresholds(libc: ctypes.CDLL | None) -> bool:
    """Keep glibc's mmap and trim thresholds at their initial 128 KiB (unless the user set
    them): returns whether they were fixed.

    glibc raises both for good the first time a block it had mmap'd is freed: the mmap
    threshold to that block's size, the trim threshold to twice that (up to 32 / 64 MiB).
    After that, blocks below the new threshold come from the arenas, and a thread arena
    keeps up to the trim threshold of free memory at its top, which `malloc_trim` does not
    hand back (it trims only the main arena's top). Measured in the soak
    (benchmarks/soak.py, 12 threads): glibc's free-but-kept memory 62 MiB at 300 s and
    102 MiB at 350 s with the dynamic thresholds, 29 MiB and 52 MiB with them fixed (it
    still grows, by fragmentation: 99 MiB at 1200 s). A block of 128 KiB or more is then
    mmap'd and unmapped at its free, as before the first raise.
    """
    if libc is None or any(v in os.environ for v in _GLIBC_VARS):
        return False
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        return False
    try:
        mallopt = libc.mallopt
    except AttributeError:  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # the mmap threshold first: setting either turns glibc's dynamic thresholds off
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD_BYTES))


_c = _libc()
_trim = _malloc_trim(_c)
#: glibc's thresholds were fixed at import (`_fix_thresholds`)
FIXED_THRESHOLDS = _fix_thresholds(_c)


def release() -> None:
    """After a flush or a merge: what Arrow's pool and the C allocator keep of freed memory
    goes back to the OS, so the process's RSS does not stay at the operation's peak
    (measured at 1M entities: -25 MiB from malloc_trim after a flush)."""
    pa.default_memory_pool().release_unused()
    if _trim is not None:
        _trim(0)
