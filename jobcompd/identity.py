"""File identity and read positions: which log a position belongs to, independent of its path.

A file is identified by a fingerprint of its first complete line — a job record, unique to that
file (it names a job and its times) and stable while the file grows or is renamed by logrotate.
Device and inode numbers are kept only as hints: inodes are reused after a file is deleted.

A read position is stored under a key naming who reads the file and its fingerprint: ``file:FP``
for the daemon's tailer, ``replay:FP`` for ``jobcompd replay`` (each reads a file on its own).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

__all__ = ["LIVE", "REPLAY", "FileIdentity", "Position", "fingerprint", "position_key"]

LIVE = "file"
REPLAY = "replay"


def fingerprint(first_line: bytes, max_line_bytes: int) -> str:
    """Fingerprint of a file whose first line (with its ``\\n``) is ``first_line``.

    Only its first ``max_line_bytes + 1`` bytes count — a longer line is cut there when read —
    so every reader agrees whether it saw an over-long first line whole or cut short.
    """
    head = first_line[: max_line_bytes + 1]
    return hashlib.blake2b(head, digest_size=16, person=b"jobcompd-file-v1").hexdigest()


def position_key(reader: str, fp: str) -> str:
    """The key the position of ``reader`` (:data:`LIVE` or :data:`REPLAY`) in file ``fp`` is stored under."""
    return f"{reader}:{fp}"


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A log file as jobcompd knows it: content fingerprint, with device/inode as hints."""

    fingerprint: str
    dev: int = 0
    inode: int = 0

    @property
    def key(self) -> str:
        """The key the tailer's read position in this file is stored under."""
        return position_key(LIVE, self.fingerprint)


@dataclass(frozen=True, slots=True)
class Position:
    """Where a reader of one log file stands: the byte ``offset`` after the last line consumed.

    ``key`` is where it is stored (see :func:`position_key`); ``path`` is where the file was last
    seen; ``inode`` and ``dev`` are hints for recognising it again. ``updated_at`` is set when stored.
    """

    key: str
    path: str
    fingerprint: str
    offset: int
    line_no: int
    inode: int = 0
    dev: int = 0
    updated_at: float = field(default=0.0, compare=False)

    @property
    def reader(self) -> str:
        """:data:`LIVE`, :data:`REPLAY` (or what else the key was stored under)."""
        return self.key.partition(":")[0]
