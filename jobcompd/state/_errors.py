"""Errors of the state: what failed, why, and what an operator can do about it."""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

RECOVER_CORRUPT = (
    "stop jobcompd; rename {name} and its -wal and -shm files to {name}.broken, "
    "{name}.broken-wal and {name}.broken-shm; then either rebuild the state with "
    "`sqlite3 {name}.broken .recover | sqlite3 {name}` or start with an empty state directory; "
    "undelivered records in the old file can be replayed with `jobcompd replay`"
)

RECOVER_DISK = (
    "free space on (or remount read-write) the filesystem holding {dir}; nothing of the failed "
    "call was stored, so stop reading and retry later"
)

RECOVER_PERMISSIONS = (
    "make {dir} and {name} readable and writable by the user jobcompd runs as (SQLite also "
    "creates {name}-wal and {name}-shm there), or set state_dir to another directory"
)

RECOVER_LOCKED = "another process holds the database; check that only one jobcompd uses {dir}"

RECOVER_READONLY = "this State was opened read-only (as `jobcompd status` does); open it read-write"

RECOVER_BUG = "this is a bug in the caller; the whole call was rolled back and nothing was stored"


class StateError(Exception):
    """The durable state cannot do what was asked; the failed call changed nothing.

    ``reason`` says what went wrong, ``recovery`` what an operator can do about it. ``transient``
    is true when the cause lies outside the database (a full or read-only filesystem, a lock held
    by another process): the caller should stop reading and retry the same call later.
    ``rejected`` is true when a value passed in could not be stored (the same call fails again).
    """

    def __init__(
        self,
        path: str | Path,
        reason: str,
        recovery: str,
        *,
        transient: bool = False,
        rejected: bool = False,
    ):
        super().__init__(f"state database {path}: {reason}. Recovery: {recovery}")
        self.path = Path(path)
        self.reason = reason
        self.recovery = recovery
        self.transient = transient
        self.rejected = rejected


def _translate(path: Path, action: str, exc: sqlite3.Error) -> StateError:
    """Turn an SQLite error into a `StateError` with a reason and a recovery."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = None if code is None else code & 0xFF
    reason = f"cannot {action}: {exc}"
    if primary in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StateError(path, reason, _recovery(RECOVER_CORRUPT, path))
    if primary in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY):
        return StateError(path, reason, _recovery(RECOVER_DISK, path), transient=True)
    if primary in (sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_AUTH):
        return StateError(path, reason, _recovery(RECOVER_PERMISSIONS, path), transient=True)
    if primary in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StateError(path, reason, _recovery(RECOVER_LOCKED, path), transient=True)
    if isinstance(exc, sqlite3.IntegrityError | sqlite3.ProgrammingError | sqlite3.InterfaceError):
        return _rejected(path, action, exc)
    return StateError(path, reason, _recovery(RECOVER_CORRUPT, path))


def _rejected(path: Path, action: str, exc: Exception) -> StateError:
    """A value the caller passed cannot be stored: a bug on its side, and nothing was stored."""
    return StateError(
        path, f"cannot {action}: {exc} (a value was rejected)", RECOVER_BUG, rejected=True
    )


def _recovery(template: str, path: Path) -> str:
    return template.format(name=path.name, dir=path.parent)


def _sidecar(path: Path, suffix: str) -> Path:
    return path.with_name(path.name + suffix)


def _size(path: Path) -> int:
    try:
        st = path.stat()
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0
