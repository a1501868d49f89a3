"""What the tailer hands out: batches of lines, and where it stands."""

from __future__ import annotations

from dataclasses import dataclass

from jobcompd.identity import FileIdentity


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
