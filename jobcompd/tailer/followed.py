"""A followed file: its reader, identity and position, long lines, held record starts, retirement."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from jobcompd.identity import FileIdentity, Position, fingerprint
from jobcompd.logfile import (
    CHUNK,
    Reader,
    end_of_lines,
    first_line,
)
from jobcompd.tailer.rotation import take_lines
from jobcompd.tailer.values import LineBatch

_Signature = tuple[int, int, int, int]

WRITE_CUT = 4096
"""Where a reader can see one ``write()`` cut: a file grows by whole pages while a write is copied
into it (one page, or a larger folio, at a time), so a write seen in part ends at a multiple of the
page size (4 KiB, or 64 KiB, a multiple of it). slurmctld writes each record in one ``write()``,
so the lines read up to the file's end elsewhere hold whole records: none is held for its rest."""


def _signature(st: os.stat_result) -> _Signature:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _stat_key(path: Path | str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _link_target(path: Path) -> tuple[str, str] | None:
    """The directory and name of the file a symbolic link at ``path`` leads to (through every link
    on the way); None when ``path`` is not a symbolic link (inotify follows links to the directory
    itself: only a link at the file's own name hides its writes from the directory watched)."""
    try:
        if not stat.S_ISLNK(os.lstat(path).st_mode):
            return None
    except OSError:
        return None
    directory, name = os.path.split(os.path.realpath(path))
    return directory, name


_Role = Literal["current", "rotated", "archived"]


@dataclass(eq=False)
class _LongLine:
    start: int
    head: bytes
    scanned: int


@dataclass(eq=False)
class FollowedFile:
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


class TailerParts:
    """What the parts of :class:`jobcompd.tailer.Tailer` share: its settings and open files."""

    _path: Path
    _lookup: Callable[[str], Position | None]
    _start_at: Literal["beginning", "end"]
    _max_lines: int
    _max_line: int
    _limit: int  # max_line + 1: what is read of an over-long line
    _close_after: float
    _hold: Callable[[Sequence[bytes]], int] | None
    _hold_for: float
    _quiet_ends: float | None  # when lines the last look held are due, if it held some
    _log: Any
    _current: FollowedFile | None
    _rotated: list[FollowedFile]
    _settled: dict[_Signature, bool]  # rotated files judged: True finished, False older
    _nothing_stored: bool

    def _files(self) -> list[FollowedFile]:
        return [*self._rotated, *([self._current] if self._current else [])]

    def _find_by_inode(self, dev: int, inode: int) -> str | None:
        raise NotImplementedError


class FileReading(TailerParts):
    """Reading one open file into batches (a part of :class:`jobcompd.tailer.Tailer`)."""

    def _read_file(self, f: FollowedFile) -> LineBatch | None:
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

    def _still_readable(self, f: FollowedFile, now: float) -> bool:
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

    def _identify(self, f: FollowedFile, *, final: bool, at_start: bool = False) -> bool:
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

    def _next_batch(self, f: FollowedFile, *, final: bool) -> LineBatch | None:
        if f.long is not None:
            return self._long_line(f, final=final)
        want = max(CHUNK, self._limit + 1)  # room for a longest line and its "\r\n"
        if f.role == "current" and f.size > f.offset:
            # Its size as fstat gave it in this look (``_observe``): a line or two written asks for
            # a buffer of their size, not of CHUNK. What comes meanwhile is read at the next look.
            want = min(want, f.size - f.offset)
        data = f.reader.pread(f.offset, want)
        f.at_end = not data
        if not data:
            return None
        taken = take_lines(data, f.offset, max_lines=self._max_lines,
                           max_line_bytes=self._max_line)
        if taken.lines:
            end = f.offset + len(data)
            whole = taken.end == end and (len(data) < want or end == f.size) and end % WRITE_CUT != 0
            keep = 0 if final or whole or self._hold is None else self._hold(taken.lines)
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

    def _holding(self, f: FollowedFile, offset: int) -> bool:
        """Whether the lines from ``offset`` on still wait for the rest of their record."""
        now = time.monotonic()
        if f.held is None or f.held[0] != offset:
            f.held = (offset, now)
        due = f.held[1] + self._hold_for
        if now >= due:
            return False
        self._quiet_ends = due if self._quiet_ends is None else min(self._quiet_ends, due)
        return True

    def _long_line(self, f: FollowedFile, *, final: bool) -> LineBatch | None:
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

    def _emit(self, f: FollowedFile, lines: list[bytes], offsets: list[int], end: int) -> LineBatch:
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

    def _retire(self, f: FollowedFile) -> None:
        if f.reader.failed is not None:
            self._log.warning("could not read the rest of a compressed rotated file",
                              path=f.path, offset=f.offset, error=f.reader.failed)
        else:
            self._log.info("finished rotated file", path=f.path, offset=f.offset,
                           line_no=f.line_no)
            self._settled[_signature(f.reader.fstat())] = True
        f.reader.close()
        self._rotated.remove(f)
