"""The write-ahead log flushed to disk on a thread of its own (``synchronous = "full"``).

SQLite's own FULL mode flushes the log inside each COMMIT, under the state's lock: a disk that
took half a second to flush (a busy controller node, a shared volume) held up the reader, and
every line written meanwhile, for as long. Instead the connection commits with NORMAL (the log
written, not yet flushed) and :class:`Flusher` flushes it with ``fdatasync`` right after, while
the reader goes on reading and sending. A batch and its read position are in one transaction, so
a power cut before the flush takes both back together: its lines are read again from the log,
nothing is lost. The reader is held back only once the records of commits not yet flushed would
pass :data:`FLUSH_LAG_RECORDS`, which bounds what a power cut can make it read again, or once the
oldest of them has waited :data:`FLUSH_LAG_S` for its flush: a disk that no longer flushes at all
stops the reading within that time, as it did inside the commit, and the daemon's health report
goes stale for monitoring to see, however slowly lines come.

Checkpoints (the log copied into the database, with two more flushes) run here too, on a
connection of this thread's own, rather than inside whichever commit crosses SQLite's threshold;
that threshold stays, higher, as a backstop for a log the checkpoints here cannot catch up with.
"""

from __future__ import annotations

import collections
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from jobcompd.state._errors import RECOVER_DISK, StateError, _recovery, _sidecar
from jobcompd.state._schema import BUSY_TIMEOUT_MS, _connect
from jobcompd.threads import NamedThread

FLUSH_LAG_RECORDS = 5000
"""Records of committed batches not yet flushed to disk, at most, before the next batch waits."""

FLUSH_LAG_S = 10.0
"""Seconds the oldest commit not yet flushed may wait, at most, before the next batch waits too."""

BACKSTOP_CHECKPOINT_PAGES = 4096
"""SQLite's own checkpoint (inside a commit) once the log holds this many pages (64 MiB)."""

_CHECKPOINT_EVERY_S = 1.0  # the log copied into the database at most this often, after a flush
_RETRY_S = 1.0  # after a failed flush, the next try


class Flusher:
    """Flushes the state's write-ahead log after each commit that asks for it, on its own thread.

    The state calls :meth:`admit` before a commit (it waits while too many records, or too old a
    commit, are not flushed yet), :meth:`committed` after it, :meth:`settled` after a settlement of delivery
    reports (they are flushed with the next flush), and :meth:`flush` to wait for one. ``sync``
    is ``os.fdatasync`` (tests may slow it down or make it fail).
    """

    def __init__(self, path: Path, *, sync: Callable[[int], None] = os.fdatasync) -> None:
        self._path = path
        self._wal = _sidecar(path, "-wal")
        self.sync = sync
        self._cond = threading.Condition()
        self._requested = self._done = 0  # flushes asked for, and the last one done
        # Commits not flushed yet: the flush request each made, and when.
        self._unflushed: collections.deque[tuple[int, float]] = collections.deque()
        self._records = self._records_flushed = 0  # records of commits, and of flushed ones
        self._reports = self._reports_flushed = 0  # reports settled, and flushed
        self._error: OSError | None = None  # the last flush failed with this
        self._closing = False
        self._checkpoints: sqlite3.Connection | None = None
        self._checkpointed_at = time.monotonic()
        self._thread = NamedThread(target=self._run, name="jobcompd-flush", daemon=True)
        self._thread.start()

    def admit(self, records: int) -> None:
        """Wait until a commit of ``records`` more keeps the records not yet flushed within
        :data:`FLUSH_LAG_RECORDS` (one commit may always go when everything before it is flushed)
        and no commit has waited :data:`FLUSH_LAG_S` for its flush; raise `StateError` while
        flushing fails."""
        with self._cond:
            while True:
                self._raise_failed()
                unflushed = self._records - self._records_flushed
                if not unflushed or unflushed + records <= FLUSH_LAG_RECORDS:
                    oldest = self._unflushed[0][1] if self._unflushed else None
                    if oldest is None or time.monotonic() - oldest < FLUSH_LAG_S:
                        return
                self._cond.wait(_RETRY_S)

    def committed(self, records: int) -> None:
        """A commit of ``records`` records (or none) is written: flush it."""
        with self._cond:
            self._records += records
            self._requested += 1
            self._unflushed.append((self._requested, time.monotonic()))
            self._cond.notify_all()

    def settled(self, reports: int) -> None:
        """``reports`` delivery reports were settled: flushed with the next flush."""
        with self._cond:
            self._reports += reports

    @property
    def unflushed_reports(self) -> int:
        """Delivery reports settled and not flushed to disk yet."""
        with self._cond:
            return self._reports - self._reports_flushed

    def flush(self) -> None:
        """Flush everything committed so far and wait for it; `StateError` if that fails."""
        with self._cond:
            self._requested += 1
            wanted = self._requested
            self._cond.notify_all()
            while self._done < wanted:
                self._raise_failed()
                self._cond.wait(_RETRY_S)

    def close(self) -> None:
        """Flush what is left, stop the thread (idempotent)."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    def _raise_failed(self) -> None:
        if not self._thread.is_alive():
            raise StateError(self._path, "the thread that flushes the state to disk is gone",
                             _recovery(RECOVER_DISK, self._path))
        if self._error is not None:
            raise StateError(
                self._path,
                f"cannot flush the write-ahead log to disk: {self._error.strerror or self._error}",
                _recovery(RECOVER_DISK, self._path),
                transient=True,
            )

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    self._cond.wait_for(lambda: self._closing or self._requested > self._done)
                    if self._requested == self._done:
                        return  # closing, everything flushed
                    wanted, records, reports = self._requested, self._records, self._reports
                try:
                    self._flush_log()
                except OSError as exc:
                    with self._cond:
                        self._error = exc
                        self._cond.notify_all()
                        if self._closing:
                            return
                        self._cond.wait(_RETRY_S)
                    continue
                with self._cond:
                    self._done = wanted
                    self._records_flushed, self._reports_flushed = records, reports
                    while self._unflushed and self._unflushed[0][0] <= wanted:
                        self._unflushed.popleft()
                    self._error = None
                    self._cond.notify_all()
                if time.monotonic() - self._checkpointed_at >= _CHECKPOINT_EVERY_S:
                    self._checkpoint()
        finally:
            if self._checkpoints is not None:
                self._checkpoints.close()

    def _flush_log(self) -> None:
        try:
            fd = os.open(self._wal, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no log: everything is in the database file
        try:
            self.sync(fd)
        finally:
            os.close(fd)

    def _checkpoint(self) -> None:
        """Copy the flushed log into the database without waiting for anyone (PASSIVE)."""
        self._checkpointed_at = time.monotonic()
        try:
            if self._checkpoints is None:
                self._checkpoints = _connect(self._path, "mode=rw")
                self._checkpoints.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                self._checkpoints.execute("PRAGMA cache_size = 16")
            self._checkpoints.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except (sqlite3.Error, StateError):
            pass  # tried again at the next; SQLite's own checkpoint is the backstop
