"""Rotated files next to the log: found, judged against stored positions, adopted oldest first."""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobcompd.identity import FileIdentity, Position, fingerprint
from jobcompd.logfile import (
    DecompressedReader,
    Reader,
    first_line,
    open_reader,
)
from jobcompd.tailer.followed import FollowedFile, TailerParts, _link_target, _Signature, _signature
from jobcompd.tailer.rotation import rotation_keys, rotation_stamp

# mtimes lag the wall clock by up to a kernel tick, and are whole seconds on ext3 and some NFS.
_MTIME_SLACK = 1.0


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


class Siblings(TailerParts):
    """Finding and adopting rotated siblings (a part of :class:`jobcompd.tailer.Tailer`)."""

    def _list_siblings(self) -> list[_Sibling]:
        found: list[tuple[str, int | str, os.stat_result]] = []
        seen: set[tuple[int, int]] = set()
        for directory, base in _places(self._path):
            try:
                entries = list(os.scandir(directory))
            except OSError:
                continue
            for entry in entries:
                stamp = rotation_stamp(base, entry.name)
                if stamp is None:
                    continue
                try:
                    st = entry.stat()
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
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

    def _fingerprint_of(self, f: FollowedFile) -> str | None:
        """The fingerprint ``f`` has, or will have once identified (a compressed copy of a file
        still open must not be taken for another file)."""
        if f.identity is not None:
            return f.identity.fingerprint
        first = first_line(f.reader, self._limit, final=False)
        return None if first is None else fingerprint(first, self._limit - 1)

    def _track_sibling(self, sib: _Sibling, offset: int, line_no: int) -> None:
        assert sib.reader is not None and sib.fp is not None
        first_len = len(first_line(sib.reader, self._limit, final=sib.compressed) or b"")
        self._rotated.append(FollowedFile(
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


def _places(path: Path) -> list[tuple[str, str]]:
    """Where rotated files of the log at ``path`` are looked for: beside it, by its name, and when
    ``path`` is a symbolic link, beside the file it leads to, by that file's name (logrotate
    rotates the file it is given, and refuses a symbolic link)."""
    places = [(str(path.parent), path.name)]
    target = _link_target(path)
    if target is not None and target != places[0]:
        places.append(target)
    return places
