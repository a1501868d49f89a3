"""An event a signal handler may set: the daemon's stop and reload requests, the reader's wake-up.

A Python signal handler runs in the main thread, between two of its bytecodes, whatever that
thread was doing. ``threading.Event.set()`` takes the event's lock, and the main thread may hold
that very lock when the signal comes (it is leaving ``Event.wait()``): the handler then waits for
itself, forever, and the daemon ignores SIGTERM. :class:`Wakeup` takes no lock to be set: a plain
flag, and a count added to an ``eventfd`` (one ``write()``), which the waiter polls.

The waiter can wait for other file descriptors in the same ``poll()`` (:meth:`Wakeup.watch`): the
reader waits for inotify's events itself, so that a line written is read without a hand-off from
another thread.
"""

from __future__ import annotations

import math
import os
import select
import time
from collections.abc import Callable

__all__ = ["Wakeup"]


class Wakeup:
    """``threading.Event``'s ``set``/``is_set``/``clear``/``wait``, with a ``set()`` that is safe in a
    signal handler (and from any thread). For one waiting thread: a ``set()`` wakes one waiter."""

    __slots__ = ("_fd", "_flag", "_poll", "_ready", "_written")

    def __init__(self) -> None:
        self._flag = False
        self._written = False  # set() may have added to the eventfd's count since clear() read it
        self._fd = -1  # (what __del__ finds, should eventfd() fail)
        self._fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._poll = select.poll()
        self._poll.register(self._fd, select.POLLIN)
        self._ready: dict[int, Callable[[], None]] = {}

    def __del__(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def set(self) -> None:
        self._flag = True
        os.eventfd_write(self._fd, 1)
        self._written = True

    def set_in_wait(self) -> None:
        """:meth:`set`, from the waiting thread itself (a watched descriptor's ``ready()``): the
        wait sees the flag as ``ready()`` returns, so nothing is written to wake it."""
        self._flag = True

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        if self._written:  # (else the count is 0: no read, no EAGAIN raised and caught)
            self._written = False
            self._drain()

    def _drain(self) -> None:
        try:
            os.eventfd_read(self._fd)
        except BlockingIOError:
            pass

    def watch(self, fd: int, ready: Callable[[], None]) -> None:
        """While waiting, wait for ``fd`` to be readable too, and then call ``ready()`` (in the
        waiting thread; it may :meth:`set` this wake-up, or not)."""
        self._ready[fd] = ready
        self._poll.register(fd, select.POLLIN)

    def unwatch(self, fd: int) -> None:
        """Stop waiting for ``fd`` (before it is closed)."""
        if self._ready.pop(fd, None) is not None:
            self._poll.unregister(fd)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set, or ``timeout`` seconds; whether it is set. The descriptors watched that
        are readable meanwhile (without a wait: those readable now) are served."""
        if self._flag:
            return True
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while not self._flag:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            for fd, _ in self._poll.poll(None if left is None else math.ceil(left * 1000)):
                if fd == self._fd:
                    self._drain()  # a set() that a clear() came after; else the flag is up
                else:
                    self._ready[fd]()
            if left == 0.0:
                break
        return self._flag
