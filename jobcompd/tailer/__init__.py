"""Follow one log file as lines are written, through everything logrotate does.

The tailer turns the file system into :class:`LineBatch` values — complete lines with their byte
offsets and line numbers — and knows nothing about parsing, Kafka or the state database. The
caller commits each batch together with its end position (under ``batch.identity.key``) in one
transaction, and tells the tailer what it committed (``lookup``, ``known``) when it starts.

How files are told apart and followed (after Filebeat's filestream and Vector's file source):

* A file's identity is the fingerprint of its first complete line; device and inode are hints.
  A file with no complete line yet has no identity and is not read.
* watchdog events on the log's directory only wake :meth:`Tailer.read`; every decision comes
  from ``stat`` of the path and ``fstat`` of the open files, in one switch (:func:`classify`).
  The path is re-checked every ``recheck_interval`` seconds even without events; once a look has
  read everything and inotify watches every way to the file (its directory, and the target's
  directory when the path is a symbolic link), every ``quiet_recheck`` seconds: events then tell
  every change, and the look is only a safety net.
* create-mode rotation (rename, then create): the old file is drained through its open descriptor
  — slurmctld keeps writing to it until it reopens the path — until it has been idle
  ``close_rotated_after`` seconds, while the new file is followed at the path. Older files are
  always read first.
* copytruncate (the file shrinks below the read offset, or its first line changes): read again
  from 0 with a new identity; what the copy holds beyond the last read position is read from the
  copy. Lines written between logrotate's copy and its truncate that were not read yet are lost:
  no file holds them any more.
* At start and after each rotation, rotated siblings (``NAME.1``, ``NAME.2.gz``,
  ``NAME-20241124``, …) are checked: a stored file short of its end is finished from its stored
  position; a never-seen file that is newer than a known one, or than the last committed position,
  is read in full; oldest first. On a very first start (nothing stored) siblings are ignored.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import structlog

from jobcompd.identity import Position, fingerprint
from jobcompd.logfile import BATCH_LINES, log_problem, open_reader
from jobcompd.record import DEFAULT_MAX_LINE_BYTES
from jobcompd.tailer.followed import FileReading, FollowedFile, _Signature, _stat_key
from jobcompd.tailer.rotation import (
    Change,
    Lines,
    Observed,
    classify,
    rotation_keys,
    rotation_stamp,
    take_lines,
)
from jobcompd.tailer.siblings import Siblings
from jobcompd.tailer.values import FileStatus, LineBatch, TailStatus
from jobcompd.tailer.watch import DirectoryWatch
from jobcompd.wakeup import Wakeup

__all__ = [
    "Change",
    "FileStatus",
    "LineBatch",
    "Lines",
    "Observed",
    "TailStatus",
    "Tailer",
    "classify",
    "rotation_keys",
    "rotation_stamp",
    "take_lines",
]

_PROBLEM_EVERY_S = 300.0  # a log that cannot be read is logged again this often


class Tailer(FileReading, Siblings):
    """Follows one log file and returns batches of complete lines with their positions.

    ``lookup(fingerprint)`` returns the committed position of a file identity (or None);
    ``known()`` returns every committed ``(fingerprint, position)`` — it tells a very first start
    from a restart and finds rotated files left unfinished. ``start_at="end"`` skips what the file
    holds at a very first start. ``poll=True`` uses watchdog's polling observer (NFS).
    ``hold(lines)`` says how many of the last lines read may still be continued by lines not
    written yet (a record whose name holds line breaks); those wait, like a partial line, for up to
    ``hold_for`` seconds of quiet before they are delivered as they are — only when the file ends
    where a ``write()`` can be seen cut (:data:`jobcompd.tailer.followed.WRITE_CUT`): elsewhere
    its end is a write's end.
    :meth:`read` is called from one thread, which serves inotify's events as it waits (the polling
    observer's thread, with ``poll``, only wakes it).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        lookup: Callable[[str], Position | None],
        known: Callable[[], list[tuple[str, Position]]] | None = None,
        start_at: Literal["beginning", "end"] = "beginning",
        poll: bool = False,
        max_batch_lines: int = BATCH_LINES,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        close_rotated_after: float = 60.0,
        recheck_interval: float = 1.0,
        quiet_recheck: float | None = None,
        hold: Callable[[Sequence[bytes]], int] | None = None,
        hold_for: float = 2.0,
        logger: Any = None,
    ) -> None:
        if start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', not {start_at!r}")
        if max_batch_lines < 1 or max_line_bytes < 1:
            raise ValueError("max_batch_lines and max_line_bytes must be at least 1")
        quiet_recheck = recheck_interval if quiet_recheck is None else quiet_recheck
        if close_rotated_after < 0 or recheck_interval <= 0 or quiet_recheck <= 0:
            raise ValueError("close_rotated_after must be >= 0, recheck_interval and quiet_recheck > 0")
        self._path = Path(os.path.abspath(path))
        self._lookup = lookup
        self._known = known
        self._start_at = start_at
        self._poll = poll
        self._max_lines = max_batch_lines
        self._max_line = max_line_bytes
        self._limit = max_line_bytes + 1
        self._close_after = close_rotated_after
        self._recheck = recheck_interval
        self._quiet_recheck = quiet_recheck
        self._hold = hold
        self._hold_for = hold_for
        self._log = logger or structlog.get_logger("jobcompd.tailer")
        # Set by inotify's events (served as read() waits), the polling observer's thread, and a
        # signal handler (wake()).
        self._wake = Wakeup()
        self._interrupted = False  # set by wake(): the waiting read() returns
        self._read_all = False  # the last look left nothing to read, and inotify watches
        self._quiet_ends: float | None = None  # see FileReading._holding
        self._next_look = 0.0  # when the clock looks again without an event (see _poll_once)
        self._lock = threading.Lock()
        self._watch: DirectoryWatch | None = None
        self._current: FollowedFile | None = None
        self._rotated: list[FollowedFile] = []
        # rotated siblings already judged (by stat signature): True if finished, False if older
        # than anything followed; they are not opened again
        self._settled: dict[_Signature, bool] = {}
        self._started = False
        self._nothing_stored = True
        self._confirmed_at = 0.0
        self._waiting_logged = False
        self.problem: str | None = None
        """Why the log file cannot be read, while it cannot (None: it can, or it does not exist)."""
        self._problem_logged_at = 0.0

    @property
    def path(self) -> Path:
        """The followed path (absolute)."""
        return self._path

    def start(self) -> None:
        """Watch the log's directory, open the log and find rotated files left unfinished."""
        with self._lock:
            if self._started:
                return
            self._watch = DirectoryWatch(self._path, self._wake, poll=self._poll,
                                         timeout=min(self._recheck, 1.0), logger=self._log)
            self._watch.start()
            wall = time.time()
            stored = None if self._known is None else dict(self._known())
            self._nothing_stored = not stored
            if _stat_key(self._path) is None:
                self._log_waiting()
            else:
                self._open_current()
                if self._current is not None:
                    self._identify(self._current, final=False, at_start=True)
            if stored is None:
                self._adopt_siblings(self._lookup, newer_than=None)
            elif stored:
                newest = max(p.updated_at for p in stored.values())
                self._adopt_siblings(stored.get, newer_than=newest)
            self._confirmed_at = wall
            self._started = True

    def stop(self) -> None:
        """Stop watching and close every file; positions live with the caller."""
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        with self._lock:
            for f in self._files():
                f.reader.close()
            self._current = None
            self._rotated = []
            self._started = False
        self._wake.set()

    def __enter__(self) -> Tailer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def wake(self) -> None:
        """End a :meth:`read` that is waiting, with None (thread- and signal-safe)."""
        self._interrupted = True
        self._wake.set()

    def read(self, timeout: float) -> LineBatch | None:
        """The next batch of complete lines, waiting up to ``timeout`` seconds; None if none.

        Rotated files are read before the followed one, each in order. The caller commits the
        batch's end position (or holds it) before calling again; a
        caller that reads ahead of its commits answers ``lookup`` with the end of the batches it
        holds, since that is where their file is read up to.
        """
        if not self._started:
            raise RuntimeError("Tailer.read() before start()")
        deadline = time.monotonic() + max(timeout, 0.0)
        # The last look read everything there was, and no event came since it (the wake-up is
        # cleared before each look, and inotify reports every write after that): nothing can
        # have changed, so wait for an event before looking. A trickle read a line at a time
        # looked twice per line, the first time for nothing. A look the clock makes (the recheck)
        # that falls due within this read is made now: this wake-up of the caller's costs less
        # than one more for the look alone.
        look = (
            not self._read_all
            or self._wake.wait(0)  # (inotify's events queued are served: they may set it)
            or time.monotonic() >= self._next_look - max(timeout, 0.0)
        )
        while True:
            if look:
                self._wake.clear()
                with self._lock:
                    if not self._started:
                        return None
                    batch = self._poll_once()
                if batch is not None:
                    return batch
            look = True
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0 or self._interrupted:
                self._interrupted = False
                return None
            # The recheck counts from the last look, across reads: a caller that reads with
            # shorter timeouts still gets it.
            wait = min(remaining, max(0.0, self._next_look - now))
            if self._quiet_ends is not None:
                # Lines the last look held are looked at again as their quiet ends (hold_for),
                # not up to a recheck later.
                wait = max(0.0, min(wait, self._quiet_ends - time.monotonic()))
            if not self._wake.wait(wait) and time.monotonic() >= deadline:
                # Quiet until the deadline: the caller's next read() looks first thing if a look
                # is due (looking here too was a second look within a millisecond, every time).
                return None

    def status(self) -> TailStatus:
        """The followed file, the rotated files still drained, and unread bytes (thread-safe)."""
        with self._lock:
            cur = self._current
            following = None if cur is None else self._file_status(cur)
            draining = tuple(self._file_status(f) for f in self._rotated)
        lag = sum(s.lag_bytes for s in draining) + (following.lag_bytes if following else 0)
        return TailStatus(
            path=str(self._path),
            identity=following.identity if following else None,
            offset=following.offset if following else 0,
            size=following.size if following else None,
            lag_bytes=lag,
            draining=draining,
            waiting_for_file=cur is None,
        )

    def _poll_once(self) -> LineBatch | None:
        self._quiet_ends = None
        if self._watch is not None:
            self._watch.ensure()
        observed = self._current  # its size is this look's (fstat, in _follow_path)
        self._follow_path()
        batch = None
        for f in self._files():
            if f is not self._current and f not in self._rotated:
                continue  # given up while reading an earlier file
            batch = self._read_file(f)
            if batch is not None:
                break
        # Only the followed file, read to the size this look found (no line held back, no long
        # line, no rotated file drained by the clock, not a file opened in this look), and every
        # write to it since is an event.
        cur = self._current
        self._read_all = (
            cur is not None
            and cur is observed
            and not self._rotated
            and cur.identity is not None
            and cur.long is None
            and cur.offset >= cur.size
            and self.problem is None
            and self._watch is not None
            and self._watch.watching
        )
        self._next_look = time.monotonic() + (self._quiet_recheck if self._read_all else self._recheck)
        return batch

    def _follow_path(self) -> None:
        """Compare the path with the followed file and act on the difference."""
        wall = time.time()
        at_path = _stat_key(self._path)
        cur = self._current
        change = classify(None if cur is None else self._observe(cur), at_path)
        match change:
            case Change.NONE | Change.WRITE:
                if cur is None:
                    self._log_waiting()
            case Change.CREATE:
                self._open_current()
                if self._current is None:
                    self._log_waiting()
                    return  # gone again, or not a regular file: look again later
                self._adopt_siblings(self._lookup, newer_than=self._confirmed_at)
            case Change.TRUNCATE:
                assert cur is not None
                self._truncated(cur)
            case Change.RENAME | Change.DELETE:
                assert cur is not None
                self._rotated_away(cur, change)
                if at_path is not None:
                    self._open_current()
                else:
                    self._log_waiting()
                self._adopt_siblings(self._lookup, newer_than=self._confirmed_at)
        self._confirmed_at = wall

    def _observe(self, cur: FollowedFile) -> Observed:
        st = cur.reader.fstat()
        changed = (st.st_size, st.st_mtime_ns) != (cur.size, cur.mtime_ns)
        if st.st_size != cur.size:
            cur.grew_at = time.monotonic()
        first_changed = False
        if changed and cur.identity is not None and st.st_size >= cur.offset:
            head = cur.reader.pread(0, cur.first_len)
            first_changed = fingerprint(head, self._limit - 1) != cur.identity.fingerprint
        cur.size, cur.mtime_ns = st.st_size, st.st_mtime_ns
        return Observed(st.st_dev, st.st_ino, st.st_nlink, st.st_size, cur.offset, first_changed)

    def _open_current(self) -> None:
        opened = open_reader(str(self._path), plain_only=True)
        if opened is None:
            return  # gone again already: the next look decides
        reader, st = opened
        was_waiting = self._waiting_logged
        self._waiting_logged = False
        if self.problem is not None:
            self._log.info("the log file can be read again", path=str(self._path))
            self.problem = None
        for f in self._rotated:
            if (f.dev, f.inode) == (st.st_dev, st.st_ino):
                reader.close()
                self._rotated.remove(f)
                f.role, f.path = "current", str(self._path)
                self._current = f
                self._log.info("rotated log file moved back", path=f.path)
                return
        self._current = FollowedFile(
            path=str(self._path), reader=reader, dev=st.st_dev, inode=st.st_ino, role="current",
            grew_at=time.monotonic(),
        )
        if was_waiting or self._started:
            self._log.info("following new log file", path=str(self._path), inode=st.st_ino)

    def _truncated(self, cur: FollowedFile) -> None:
        old, offset, line_no = cur.identity, cur.offset, cur.line_no
        self._log.warning(
            "log file truncated (copytruncate?): reading it again from the start",
            path=cur.path, offset=offset, size=cur.size,
        )
        cur.identity = None
        cur.offset = cur.line_no = cur.first_len = 0
        cur.long = None
        if old is not None and offset > 0:
            self._rescue(old, offset, line_no)

    def _rotated_away(self, cur: FollowedFile, change: Change) -> None:
        cur.role = "rotated"
        cur.grew_at = time.monotonic()
        self._current = None
        self._rotated.append(cur)
        if change is Change.DELETE:
            cur.name_lost = True
            self._log.info("log file deleted: draining it until idle", path=cur.path)
            return
        name = self._find_by_inode(cur.dev, cur.inode)
        if name is None:
            cur.name_lost = True
        else:
            cur.path = name
        self._log.info("log file rotated: draining it until idle", path=str(self._path),
                       rotated_to=cur.path)

    def _file_status(self, f: FollowedFile) -> FileStatus:
        try:
            size = f.reader.size()
        except OSError:
            size = None
        return FileStatus(f.path, f.identity, f.offset, size)

    def _log_waiting(self) -> None:
        """No file is followed: say why — an error while the path cannot be read (again every
        ``_PROBLEM_EVERY_S`` until fixed), else that the log is awaited (once)."""
        problem = log_problem(self._path)
        if problem is None:
            if self.problem is not None:
                self._log.info("the log file's problem is gone", path=str(self._path))
            self.problem = None
            if not self._waiting_logged:
                self._waiting_logged = True
                self._log.info("waiting for the log file to appear", path=str(self._path))
            return
        now = time.monotonic()
        if problem.reason != self.problem or now - self._problem_logged_at >= _PROBLEM_EVERY_S:
            self._problem_logged_at = now
            self._log.error("cannot read the log file", path=str(self._path), problem=problem.reason)
        self.problem = problem.reason
        self._waiting_logged = True

