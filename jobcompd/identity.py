"""File identity: which log a read position belongs to, independent of its path.

A file is identified by a fingerprint of its first complete line — a job record, unique to that
file (it names a job and its times) and stable while the file grows or is renamed by logrotate.
Device and inode numbers are kept only as hints: inodes are reused after a file is deleted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

__all__ = ["FileIdentity", "fingerprint"]


def fingerprint(first_line: bytes) -> str:
    """Fingerprint of a file whose first complete line (with its ``\\n``) is ``first_line``."""
    return hashlib.blake2b(first_line, digest_size=16, person=b"jobcompd-file-v1").hexdigest()


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """A log file as jobcompd knows it: content fingerprint, with device/inode as hints."""

    fingerprint: str
    dev: int = 0
    inode: int = 0

    @property
    def key(self) -> str:
        """The key its read position is stored under."""
        return f"file:{self.fingerprint}"
