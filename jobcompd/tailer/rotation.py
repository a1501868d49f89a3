"""The pure core of following a log: complete lines in a buffer, what a look at the path means,
how rotated files are named and ordered. No file system, no clock."""

from __future__ import annotations

import io
import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from jobcompd.logfile import (
    COMPRESSED_SUFFIXES,
)

_NUMBERED = re.compile(r"\.(\d{1,6})")
_DATED = re.compile(r"[-._](\d{4}-?\d{2}-?\d{2}(?:[-_.T]?\d+)*)")


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

    A line of up to ``max_line_bytes`` bytes without its ending (``\\n``, or ``\\r\\n`` as the
    parser reads it) is taken whole; taking stops before a longer one, at a partial line, or at the
    end of ``data``. A partial line is over-long once it is longer than a whole line can be.

    The lines are split by :mod:`io`'s reader (at ``\\n`` alone, each with its own), as ``replay``
    reads a file: no Python step per line, which the daemon's reader paid at every line before.
    """
    limit = max_line_bytes + 1  # with its "\n"; one more byte if that is a "\r\n"
    lines = io.BytesIO(data).readlines()  # shares ``data``: no copy of the buffer
    if lines and not lines[-1].endswith(b"\n"):
        lines.pop()  # a partial line
    if len(lines) > max_lines:
        del lines[max_lines:]
    overlong = False
    if lines and max(map(len, lines)) > limit:
        long = next((i for i, line in enumerate(lines) if _over(line, limit)), None)
        if long is not None:
            del lines[long:]
            overlong = True
    offsets = list(itertools.accumulate(map(len, lines), initial=start))
    end = offsets.pop()
    if not overlong and len(lines) < max_lines:
        rest = len(data) - (end - start)  # the partial line after them: its "\n" may yet come
        overlong = rest > limit or (rest == limit and not data.endswith(b"\r"))
    return Lines(lines, offsets, end, overlong)


def _over(line: bytes, limit: int) -> bool:
    """Whether a whole ``line`` is longer than ``limit`` bytes with its ``\\n`` (or one more with
    a ``\\r\\n``)."""
    return len(line) > limit and (len(line) > limit + 1 or not line.endswith(b"\r\n"))


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
