"""Keep a long-running process's RSS near what it uses (glibc malloc tuning)."""

from __future__ import annotations

import contextlib
import ctypes

__all__ = ["return_big_buffers"]

_M_MMAP_THRESHOLD = -3
BIG_BUFFER = 128 * 1024


def return_big_buffers() -> None:
    """Have glibc hand buffers of 128 KiB or more back to the system as soon as they are freed.

    By default glibc raises that threshold to the largest buffer freed so far (a 1 MiB read of the
    log, a batch's payloads, a frame to the parse worker) and keeps later ones in the heap, where
    they stay part of the RSS. A fixed threshold keeps a backlog from growing the daemon. A no-op
    where the C library has no ``mallopt``.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, BIG_BUFFER)
