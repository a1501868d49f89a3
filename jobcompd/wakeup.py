"""An event a signal handler may set: the daemon's stop and reload requests, the reader's wake-up.

A Python signal handler runs in the main thread, between two of its bytecodes, whatever that
thread was doing. ``threading.Event.set()`` takes the event's lock, and the main thread may hold
that very lock when the signal comes (it is leaving ``Event.wait()``): the handler then waits for
itself, forever, and the daemon ignores SIGTERM. :class:`Wakeup` takes no lock to be set: a plain
flag, and a token put in a :class:`queue.SimpleQueue`, whose ``put()`` is documented reentrant
(safe in signal handlers) and whose ``get()`` is what a waiter blocks in.
"""

from __future__ import annotations

import queue
import time

__all__ = ["Wakeup"]


class Wakeup:
    """``threading.Event``'s ``set``/``is_set``/``clear``/``wait``, with a ``set()`` that is safe in a
    signal handler (and from any thread). For one waiting thread: a ``set()`` wakes one waiter."""

    __slots__ = ("_flag", "_tokens")

    def __init__(self) -> None:
        self._flag = False
        self._tokens: queue.SimpleQueue[None] = queue.SimpleQueue()

    def set(self) -> None:
        self._flag = True
        self._tokens.put(None)

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False
        try:
            while True:
                self._tokens.get_nowait()
        except queue.Empty:
            pass

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until set, or ``timeout`` seconds; whether it is set."""
        if self._flag:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            try:
                self._tokens.get(timeout=left)
            except queue.Empty:
                break
        return self._flag
