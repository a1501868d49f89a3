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
  The path is re-checked every ``recheck_interval`` seconds even without events.
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
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import structlog
from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from jobcompd.identity import FileIdentity, Position, fingerprint
from jobcompd.logfile import (
    CHUNK,
    COMPRESSED_SUFFIXES,
    DecompressedReader,
    Reader,
    end_of_lines,
    first_line,
    log_problem,
    open_reader,
)

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

# mtimes lag the wall clock by up to a kernel tick, and are whole seconds on ext3 and some NFS.
_MTIME_SLACK = 1.0
_PROBLEM_EVERY_S = 300.0  # a log that cannot be read is logged again this often
_NUMBERED = re.compile(r"\.(\d{1,6})")
_DATED = re.compile(r"[-._](\d{4}-?\d{2}-?\d{2}(?:[-_.T]?\d+)*)")


# -- values ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LineBatch:
    """Complete lines read from one file, and the read position to commit with them.

    Every line ends with ``\\n``, except an over-long line — its first ``max_line_bytes + 1``
    bytes, always the last line of its batch — and the unterminated last line of a rotated file
    that is closed for good. ``offsets[i]`` is where ``lines[i]`` starts in the (uncompressed)
    file; ``end_offset``/``end_line_no`` are the position to commit for ``identity``.
    """

    identity: FileIdentity
    path: str
    lines: list[bytes]
    offsets: list[int]
    first_line_no: int
    end_offset: int
    end_line_no: int


@dataclass(frozen=True, slots=True)
class FileStatus:
    """One open file: where it is read from, how far, and how big it is (None if compressed)."""

    path: str
    identity: FileIdentity | None
    offset: int
    size: int | None

    @property
    def lag_bytes(self) -> int:
        """Bytes written but not read yet (0 when the size is unknown)."""
        return 0 if self.size is None else max(self.size - self.offset, 0)


@dataclass(frozen=True, slots=True)
class TailStatus:
    """What :meth:`Tailer.status` reports: the followed file, the rotated files still drained.

    ``lag_bytes`` counts unread bytes of the followed file and of the drained plain files.
    """

    path: str
    identity: FileIdentity | None
    offset: int
    size: int | None
    lag_bytes: int
    draining: tuple[FileStatus, ...]
    waiting_for_file: bool


# -- the pure core --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Lines:
    """Complete lines found at the front of a buffer by :func:`take_lines`.

    ``end`` is the file offset just after the last line taken; ``overlong`` says the next line is
    longer than the limit (its newline may not be written yet).
    """

    lines: list[bytes]
    offsets: list[int]
    end: int
    overlong: bool


def take_lines(data: bytes, start: int, *, max_lines: int, max_line_bytes: int) -> Lines:
    """Up to ``max_lines`` complete lines at the front of ``data``, read at file offset ``start``.

    A line of up to ``max_line_bytes + 1`` bytes (with its ``\\n``) is taken whole; taking stops
    before a longer one, at a partial line, or at the end of ``data``.
    """
    limit = max_line_bytes + 1
    lines: list[bytes] = []
    offsets: list[int] = []
    pos = 0
    overlong = False
    while len(lines) < max_lines:
        nl = data.find(b"\n", pos)
        if nl < 0:
            overlong = len(data) - pos >= limit
            break
        if nl + 1 - pos > limit:
            overlong = True
            break
        lines.append(data[pos : nl + 1])
        offsets.append(start + pos)
        pos = nl + 1
    return Lines(lines, offsets, start + pos, overlong)


class Change(Enum):
    """What happened to the followed file, as ``stat`` tells it (events are only hints)."""

    NONE = "none"  # nothing new (or still no file at the path)
    CREATE = "create"  # a file appeared at the path while none was followed
    WRITE = "write"  # the followed file has bytes beyond the read offset
    TRUNCATE = "truncate"  # it shrank below the read offset, or its first line changed
    RENAME = "rename"  # the path no longer names it: rotated away (maybe a new file is there)
    DELETE = "delete"  # it was unlinked (maybe a new file is at the path)


@dataclass(frozen=True, slots=True)
class Observed:
    """The followed file as ``fstat`` sees it now, with the read offset."""

    dev: int
    inode: int
    links: int
    size: int
    offset: int
    first_line_changed: bool = False


def classify(followed: Observed | None, at_path: tuple[int, int] | None) -> Change:
    """Decide what happened from the followed file's state and the (dev, inode) at the path."""
    if followed is None:
        return Change.NONE if at_path is None else Change.CREATE
    if followed.links == 0:
        return Change.DELETE
    if at_path != (followed.dev, followed.inode):
        return Change.RENAME
    if followed.size < followed.offset or followed.first_line_changed:
        return Change.TRUNCATE
    if followed.size > followed.offset:
        return Change.WRITE
    return Change.NONE


def rotation_stamp(base: str, name: str) -> int | str | None:
    """How logrotate named ``name`` when rotating ``base``: its number, its date digits, or None.

    ``base.3`` and ``base.3.gz`` give ``3``; ``base-20241124`` and ``base-2024-11-24-13.gz`` give
    the digits ``"20241124"`` and ``"2024112413"``; any other name gives None.
    """
    if not name.startswith(base) or name == base:
        return None
    rest = name[len(base) :]
    for suffix in COMPRESSED_SUFFIXES:
        if rest.endswith(suffix):
            rest = rest[: -len(suffix)]
            break
    if m := _NUMBERED.fullmatch(rest):
        return int(m.group(1))
    if m := _DATED.fullmatch(rest):
        return re.sub(r"\D", "", m.group(1))
    return None


def rotation_keys(stamps: Sequence[int | str], mtimes: Sequence[float]) -> list[tuple[Any, ...]]:
    """Sort keys, older first, for rotated files with these stamps and modification times.

    Names decide when they are all numbered (a higher number is older) or all dated; a mix of both
    falls back to modification times.
    """
    if all(isinstance(s, int) for s in stamps):
        return [(-int(s), m) for s, m in zip(stamps, mtimes, strict=True)]
    if all(isinstance(s, str) for s in stamps):
        return [(str(s), m) for s, m in zip(stamps, mtimes, strict=True)]
    return [(m,) for m in mtimes]


# -- reading files --------------------------------------------------------------------------------


_Signature = tuple[int, int, int, int]


def _signature(st: os.stat_result) -> _Signature:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _stat_key(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


_Role = Literal["current", "rotated", "archived"]


@dataclass(eq=False)
class _LongLine:
    start: int
    head: bytes
    scanned: int


@dataclass(eq=False)
class _Tracked:
    """An open file: the followed one (``current``), a rotated plain one drained until idle
    (``rotated``), or a compressed one read to its end (``archived``)."""

    path: str
    reader: Reader
    dev: int
    inode: int
    role: _Role
    identity: FileIdentity | None = None
    offset: int = 0
    line_no: int = 0
    first_len: int = 0
    long: _LongLine | None = None
    size: int = -1
    mtime_ns: int = -1
    grew_at: float = 0.0
    at_end: bool = False
    name_lost: bool = False
    held: tuple[int, float] | None = None  # (offset, since when) of lines waiting for the rest


@dataclass(eq=False)
class _Sibling:
    """A rotated file next to the log, as found in the directory."""

    path: str
    key: tuple[Any, ...]
    st: os.stat_result
    reader: Reader | None = None
    fp: str | None = None

    @property
    def compressed(self) -> bool:
        return isinstance(self.reader, DecompressedReader)

    def finished_at(self, offset: int) -> bool:
        """Whether a stored ``offset`` is the end of this file (False when it cannot tell)."""
        reader = self.reader
        if not isinstance(reader, DecompressedReader):
            return self.st.st_size <= offset
        hint = reader.size_hint()
        return hint is not None and hint == offset % (1 << 32)

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None


class _Wake(FileSystemEventHandler):
    """Sets ``wake`` for any event about the log or its rotated siblings; nothing else."""

    def __init__(self, name: str, wake: threading.Event) -> None:
        self._name = name
        self._wake = wake

    def on_any_event(self, event: FileSystemEvent) -> None:
        for path in (event.src_path, event.dest_path):
            if path and os.path.basename(os.fsdecode(path)).startswith(self._name):
                self._wake.set()
                return


_WAKING_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileDeletedEvent,
    FileClosedEvent,
]


# -- the tailer -----------------------------------------------------------------------------------


class Tailer:
    """Follows one log file and returns batches of complete lines with their positions.

    ``lookup(fingerprint)`` returns the committed position of a file identity (or None);
    ``known()`` returns every committed ``(fingerprint, position)`` — it tells a very first start
    from a restart and finds rotated files left unfinished. ``start_at="end"`` skips what the file
    holds at a very first start. ``poll=True`` uses watchdog's polling observer (NFS).
    ``hold(lines)`` says how many of the last lines read may still be continued by lines not
    written yet (a record whose name holds line breaks); those wait, like a partial line, for up to
    ``hold_for`` seconds of quiet before they are delivered as they are.
    :meth:`read` is called from one thread; the observer thread only wakes it.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        lookup: Callable[[str], Position | None],
        known: Callable[[], list[tuple[str, Position]]] | None = None,
        start_at: Literal["beginning", "end"] = "beginning",
        poll: bool = False,
        max_batch_lines: int = 2000,
        max_line_bytes: int = 65536,
        close_rotated_after: float = 60.0,
        recheck_interval: float = 1.0,
        hold: Callable[[Sequence[bytes]], int] | None = None,
        hold_for: float = 2.0,
        logger: Any = None,
    ) -> None:
        if start_at not in ("beginning", "end"):
            raise ValueError(f"start_at must be 'beginning' or 'end', not {start_at!r}")
        if max_batch_lines < 1 or max_line_bytes < 1:
            raise ValueError("max_batch_lines and max_line_bytes must be at least 1")
        if close_rotated_after < 0 or recheck_interval <= 0:
            raise ValueError("close_rotated_after must be >= 0 and recheck_interval > 0")
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
        self._hold = hold
        self._hold_for = hold_for
        self._log = logger or structlog.get_logger("jobcompd.tailer")
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._observer: BaseObserver | None = None
        self._watch: ObservedWatch | None = None
        self._watch_failed = False
        self._current: _Tracked | None = None
        self._rotated: list[_Tracked] = []
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

    # -- public API ------------------------------------------------------------------------------

    @property
    def path(self) -> Path:
        """The followed path (absolute)."""
        return self._path

    def start(self) -> None:
        """Watch the log's directory, open the log and find rotated files left unfinished."""
        with self._lock:
            if self._started:
                return
            self._observer = (
                PollingObserver(timeout=min(self._recheck, 1.0)) if self._poll else Observer()
            )
            self._observer.daemon = True
            self._observer.start()
            self._watch_dir()
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
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=10)
        with self._lock:
            for f in self._files():
                f.reader.close()
            self._current = None
            self._rotated = []
            self._watch = None
            self._started = False
        self._wake.set()

    def __enter__(self) -> Tailer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def read(self, timeout: float) -> LineBatch | None:
        """The next batch of complete lines, waiting up to ``timeout`` seconds; None if none.

        Rotated files are read before the followed one, each in order. The caller commits the
        batch's end position before calling again, or gives the batch back with :meth:`rewind`; a
        caller that reads ahead of its commits answers ``lookup`` with the end of the batches it
        holds, since that is where their file is read up to.
        """
        if not self._started:
            raise RuntimeError("Tailer.read() before start()")
        deadline = time.monotonic() + max(timeout, 0.0)
        while True:
            self._wake.clear()
            with self._lock:
                if not self._started:
                    return None
                batch = self._poll_once()
            if batch is not None:
                return batch
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._wake.wait(min(remaining, self._recheck))

    def rewind(self, batch: LineBatch) -> None:
        """Deliver ``batch``'s lines again (its position could not be committed).

        Call it before the next :meth:`read`; raises ValueError if the batch's file is no longer
        open or was not read that far.
        """
        with self._lock:
            for f in self._files():
                if f.identity == batch.identity and batch.offsets and batch.offsets[0] <= f.offset:
                    f.offset = batch.offsets[0]
                    f.line_no = batch.first_line_no - 1
                    f.long = None
                    f.at_end = False
                    self._wake.set()
                    return
        raise ValueError(f"cannot rewind: {batch.path} is no longer read from that position")

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

    # -- one look at the file system -------------------------------------------------------------

    def _poll_once(self) -> LineBatch | None:
        self._watch_dir()
        self._follow_path()
        for f in self._files():
            if f is not self._current and f not in self._rotated:
                continue  # given up while reading an earlier file
            batch = self._read_file(f)
            if batch is not None:
                return batch
        return None

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

    def _observe(self, cur: _Tracked) -> Observed:
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
        self._current = _Tracked(
            path=str(self._path), reader=reader, dev=st.st_dev, inode=st.st_ino, role="current",
            grew_at=time.monotonic(),
        )
        if was_waiting or self._started:
            self._log.info("following new log file", path=str(self._path), inode=st.st_ino)

    def _truncated(self, cur: _Tracked) -> None:
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

    def _rescue(self, old: FileIdentity, offset: int, line_no: int) -> None:
        """copytruncate: read what the copy holds beyond the position reached in the original."""
        unsettled = [s for s in self._list_siblings() if _signature(s.st) not in self._settled]
        siblings = self._open_siblings(unsettled)
        found = None
        for sib in siblings:
            if found is None and sib.fp == old.fingerprint and not sib.finished_at(offset):
                found = sib
            else:
                sib.close()
        if found is None:
            return
        self._log.warning(
            "reading the rest of the truncated log from its copy", path=found.path, offset=offset
        )
        self._track_sibling(found, offset, line_no)

    def _rotated_away(self, cur: _Tracked, change: Change) -> None:
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

    # -- rotated siblings ------------------------------------------------------------------------

    def _list_siblings(self) -> list[_Sibling]:
        base = self._path.name
        try:
            entries = list(os.scandir(self._path.parent))
        except OSError:
            return []
        found: list[tuple[str, int | str, os.stat_result]] = []
        for entry in entries:
            stamp = rotation_stamp(base, entry.name)
            if stamp is None:
                continue
            try:
                st = entry.stat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.append((entry.path, stamp, st))
        keys = rotation_keys([s for _, s, _ in found], [st.st_mtime for _, _, st in found])
        return [_Sibling(p, k, st) for (p, _, st), k in zip(found, keys, strict=True)]

    def _open_siblings(self, siblings: list[_Sibling]) -> list[_Sibling]:
        """Open the siblings that are not open already and read their first line."""
        tracked = {(f.dev, f.inode) for f in self._files()}
        opened = []
        for sib in siblings:
            if (sib.st.st_dev, sib.st.st_ino) in tracked:
                continue
            got = open_reader(sib.path)
            if got is None:
                continue
            sib.reader, sib.st = got
            first = first_line(sib.reader, self._limit, final=sib.compressed)
            if first is None:
                sib.close()
                continue
            sib.fp = fingerprint(first, self._limit - 1)
            opened.append(sib)
        return opened

    def _adopt_siblings(
        self, positions: Callable[[str], Position | None], *, newer_than: float | None
    ) -> None:
        """Track rotated files that hold unread lines: stored ones short of their end, and
        never-seen ones newer than a known one or than ``newer_than`` (a wall-clock time)."""
        tracked = self._files()
        tracked_inodes = {(f.dev, f.inode) for f in tracked}
        tracked_fps = {fp for f in tracked if (fp := self._fingerprint_of(f)) is not None}
        known_keys: list[tuple[Any, ...]] = []
        settled: dict[_Signature, bool] = {}
        fresh: list[_Sibling] = []
        for sib in self._list_siblings():
            sig = _signature(sib.st)
            if (sib.st.st_dev, sib.st.st_ino) in tracked_inodes:
                known_keys.append(sib.key)
            elif sig in self._settled:
                settled[sig] = self._settled[sig]
                if settled[sig]:
                    known_keys.append(sib.key)
            else:
                fresh.append(sib)
        best: dict[str, _Sibling] = {}
        for sib in self._open_siblings(fresh):
            assert sib.fp is not None
            if sib.fp in tracked_fps:
                known_keys.append(sib.key)
                sib.close()
                continue
            other = best.get(sib.fp)
            # While logrotate compresses, both NAME.1 and NAME.1.gz exist: the plain one is whole.
            if other is None or (other.compressed, -other.st.st_size) > (
                sib.compressed, -sib.st.st_size
            ):
                if other is not None:
                    other.close()
                best[sib.fp] = sib
            else:
                sib.close()
        stored = {fp: positions(fp) for fp in best}
        known_keys += [sib.key for fp, sib in best.items() if stored[fp] is not None]
        oldest_known = min(known_keys, default=None)
        picked: list[tuple[_Sibling, int, int]] = []
        for fp, sib in best.items():
            pos = stored[fp]
            if pos is not None:
                if sib.finished_at(pos.offset):
                    settled[_signature(sib.st)] = True
                    sib.close()
                    continue
                picked.append((sib, pos.offset, pos.line_no))
            elif (oldest_known is not None and sib.key > oldest_known) or (
                newer_than is not None and sib.st.st_mtime > newer_than - _MTIME_SLACK
            ):
                picked.append((sib, 0, 0))
            else:
                # Older than every file we know: from before jobcompd followed this log.
                settled[_signature(sib.st)] = False
                sib.close()
        self._settled = settled
        picked.sort(key=lambda p: p[0].key)
        for sib, offset, line_no in picked:
            self._log.info("reading rotated file", path=sib.path, offset=offset,
                           reason="unfinished" if offset else "not seen before")
            self._track_sibling(sib, offset, line_no)

    def _fingerprint_of(self, f: _Tracked) -> str | None:
        """The fingerprint ``f`` has, or will have once identified (a compressed copy of a file
        still open must not be taken for another file)."""
        if f.identity is not None:
            return f.identity.fingerprint
        first = first_line(f.reader, self._limit, final=False)
        return None if first is None else fingerprint(first, self._limit - 1)

    def _track_sibling(self, sib: _Sibling, offset: int, line_no: int) -> None:
        assert sib.reader is not None and sib.fp is not None
        first_len = len(first_line(sib.reader, self._limit, final=sib.compressed) or b"")
        self._rotated.append(_Tracked(
            path=sib.path, reader=sib.reader, dev=sib.st.st_dev, inode=sib.st.st_ino,
            role="archived" if sib.compressed else "rotated",
            identity=FileIdentity(sib.fp, sib.st.st_dev, sib.st.st_ino),
            offset=offset, line_no=line_no, first_len=first_len, size=sib.st.st_size,
            mtime_ns=sib.st.st_mtime_ns, grew_at=time.monotonic(),
        ))
        sib.reader = None

    def _find_by_inode(self, dev: int, inode: int) -> str | None:
        try:
            with os.scandir(self._path.parent) as entries:
                for entry in entries:
                    if entry.inode() == inode and entry.stat(follow_symlinks=False).st_dev == dev:
                        return entry.path
        except OSError:
            pass
        return None

    # -- reading one file ------------------------------------------------------------------------

    def _read_file(self, f: _Tracked) -> LineBatch | None:
        now = time.monotonic()
        if f.role == "rotated" and not self._still_readable(f, now):
            return None
        final = f.role == "archived" or (
            f.role == "rotated" and now - f.grew_at >= self._close_after
        )
        if f.identity is None and not self._identify(f, final=final):
            if final and f in self._rotated:
                self._retire(f)
            return None
        batch = self._next_batch(f, final=final)
        if batch is None and final and f.at_end:
            self._retire(f)
        return batch

    def _still_readable(self, f: _Tracked, now: float) -> bool:
        size = f.reader.size()
        assert size is not None
        if size != f.size:
            f.size, f.grew_at = size, now
        if size < f.offset:
            self._log.warning("rotated log file shrank: giving it up", path=f.path,
                              offset=f.offset, size=size)
            self._retire(f)
            return False
        return True

    def _identify(self, f: _Tracked, *, final: bool, at_start: bool = False) -> bool:
        """Give ``f`` its identity once its first line is complete, and decide where to start."""
        first = first_line(f.reader, self._limit, final=final)
        if first is None:
            return False
        fp = fingerprint(first, self._limit - 1)
        twin = next((g for g in self._files() if g is not f and g.identity is not None
                     and g.identity.fingerprint == fp), None)
        if twin is not None:
            # The same content open twice (e.g. a rotated file and its compressed copy): keep
            # one, which resumes from the committed position.
            drop = f if twin.role == "current" else twin
            self._log.info("same log content open twice: reading it once", path=drop.path,
                           kept=(twin if drop is f else f).path)
            drop.reader.close()
            self._rotated.remove(drop)
            if drop is f:
                return False
        f.identity = FileIdentity(fp, f.dev, f.inode)
        f.first_len = len(first)
        stored = self._lookup(f.identity.fingerprint)
        size = f.reader.size()
        if stored is not None:
            if size is not None and stored.offset > size:
                self._log.warning(
                    "log file is shorter than its stored position: reading it from the start",
                    path=f.path, offset=stored.offset, size=size,
                )
            else:
                f.offset, f.line_no = stored.offset, stored.line_no
                if at_start:
                    self._log.info("resuming log file", path=f.path, offset=f.offset,
                                   line_no=f.line_no)
        elif at_start and self._start_at == "end" and self._nothing_stored and size is not None:
            f.offset, f.line_no = end_of_lines(f.reader, size)
            self._log.info("starting at the end of the log file", path=f.path, offset=f.offset)
        return True

    def _next_batch(self, f: _Tracked, *, final: bool) -> LineBatch | None:
        if f.long is not None:
            return self._long_line(f, final=final)
        want = max(CHUNK, self._limit - 1)
        data = f.reader.pread(f.offset, want)
        f.at_end = not data
        if not data:
            return None
        taken = take_lines(data, f.offset, max_lines=self._max_lines,
                           max_line_bytes=self._max_line)
        if taken.lines:
            keep = 0 if final or self._hold is None else self._hold(taken.lines)
            if keep and self._holding(f, taken.offsets[-keep]):
                if keep == len(taken.lines):
                    return None
                return self._emit(f, taken.lines[:-keep], taken.offsets[:-keep], taken.offsets[-keep])
            return self._emit(f, taken.lines, taken.offsets, taken.end)
        if taken.overlong:
            f.long = _LongLine(f.offset, data[: self._limit], f.offset + self._limit)
            return self._long_line(f, final=final)
        if final and f.reader.failed is None:
            self._log.warning("rotated log file ends without a newline", path=f.path,
                              offset=f.offset, length=len(data))
            return self._emit(f, [data], [f.offset], f.offset + len(data))
        return None

    def _holding(self, f: _Tracked, offset: int) -> bool:
        """Whether the lines from ``offset`` on still wait for the rest of their record."""
        now = time.monotonic()
        if f.held is None or f.held[0] != offset:
            f.held = (offset, now)
        return now - f.held[1] < self._hold_for

    def _long_line(self, f: _Tracked, *, final: bool) -> LineBatch | None:
        """An over-long line: deliver its head once its end is found, skipping the rest."""
        long = f.long
        assert long is not None
        while chunk := f.reader.pread(long.scanned, CHUNK):
            nl = chunk.find(b"\n")
            if nl >= 0:
                f.long = None
                self._log.warning("line longer than max_line_bytes: cut", path=f.path,
                                  offset=long.start, length=long.scanned + nl + 1 - long.start)
                return self._emit(f, [long.head], [long.start], long.scanned + nl + 1)
            long.scanned += len(chunk)
        if final and f.reader.failed is None:
            f.long = None
            return self._emit(f, [long.head], [long.start], long.scanned)
        return None

    def _emit(self, f: _Tracked, lines: list[bytes], offsets: list[int], end: int) -> LineBatch:
        assert f.identity is not None
        if f.role == "rotated" and not f.name_lost and _stat_key(f.path) != (f.dev, f.inode):
            name = self._find_by_inode(f.dev, f.inode)
            if name is None:
                f.name_lost = True
            else:
                f.path = name
        batch = LineBatch(
            identity=f.identity, path=f.path, lines=lines, offsets=offsets,
            first_line_no=f.line_no + 1, end_offset=end, end_line_no=f.line_no + len(lines),
        )
        f.offset, f.line_no = end, f.line_no + len(lines)
        return batch

    def _retire(self, f: _Tracked) -> None:
        if f.reader.failed is not None:
            self._log.warning("could not read the rest of a compressed rotated file",
                              path=f.path, offset=f.offset, error=f.reader.failed)
        else:
            self._log.info("finished rotated file", path=f.path, offset=f.offset,
                           line_no=f.line_no)
            self._settled[_signature(f.reader.fstat())] = True
        f.reader.close()
        self._rotated.remove(f)

    # -- helpers ---------------------------------------------------------------------------------

    def _files(self) -> list[_Tracked]:
        return [*self._rotated, *([self._current] if self._current else [])]

    def _file_status(self, f: _Tracked) -> FileStatus:
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

    def _watch_dir(self) -> None:
        if self._observer is None or self._watch is not None:
            return
        try:
            self._watch = self._observer.schedule(
                _Wake(self._path.name, self._wake), str(self._path.parent),
                recursive=False, event_filter=_WAKING_EVENTS,
            )
            self._watch_failed = False
        except OSError as exc:
            if not self._watch_failed:
                self._watch_failed = True
                self._log.warning("cannot watch the log directory yet: polling it",
                                  path=str(self._path.parent), error=str(exc))
