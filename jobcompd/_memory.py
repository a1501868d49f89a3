"""Keep a long-running process's RSS near what it uses and its garbage collector out of the way."""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os

__all__ = ["tune_memory"]

_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
BIG_BUFFER = 128 * 1024
ARENAS = 2
# Objects allocated between two collections of the youngest generation (Python's default: 700).
YOUNG_COLLECTION_EVERY = 50_000


def tune_memory() -> None:
    """Tune glibc's allocator and Python's collector for a process that moves millions of records
    (call it before starting threads).

    * Buffers of 128 KiB or more go back to the system as soon as they are freed. By default glibc
      raises that threshold to the largest buffer freed so far (a 1 MiB read of the log, a batch's
      payloads, a frame to the parse worker) and keeps later ones in the heap, where they stay part
      of the RSS. A fixed threshold keeps a backlog from growing the process. (A no-op where the C
      library has no ``mallopt``.) The price: each such buffer is a fresh mapping whose every page
      faults on first touch (some 2 µs a page on the benchmark's machines), so the work done once
      a batch makes none: the tailer splits its read in place (``tailer.rotation.take_lines``),
      and a batch's payloads reach their frame in pieces (``state._codec.pack``).
    * At most ``ARENAS`` malloc arenas (glibc's default: eight per core). Each thread that
      allocates — the reader, the parse thread, the sender, librdkafka's — would get an arena of its
      own, each keeping the memory freed in it for itself: with a 1,000,000-record backlog the peak
      RSS was 61 MB, 57 MB with two arenas, at the same throughput (``docs/performance.md``). An
      administrator's ``MALLOC_ARENA_MAX`` is left as it is.
    * Every record makes a few short-lived tuples; with Python's default thresholds the collector
      runs every 700 of them and keeps re-scanning the records in flight, several percent of the
      CPU of a busy process. Objects alive at start-up (modules, settings) are frozen out of its
      scans, and the youngest generation is collected every 50,000 allocations instead.
    """
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, BIG_BUFFER)
        if "MALLOC_ARENA_MAX" not in os.environ:
            libc.mallopt(_M_ARENA_MAX, ARENAS)
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_COLLECTION_EVERY, older, oldest)
