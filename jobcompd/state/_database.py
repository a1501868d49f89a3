"""The database connection: opening, closing, transactions, statistics."""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from types import TracebackType
from typing import Self

from jobcompd.state._errors import (
    RECOVER_BUG,
    RECOVER_CORRUPT,
    RECOVER_PERMISSIONS,
    RECOVER_READONLY,
    StateError,
    _recovery,
    _sidecar,
    _size,
    _translate,
)
from jobcompd.state._flush import BACKSTOP_CHECKPOINT_PAGES, Flusher
from jobcompd.state._schema import (
    _SYNCHRONOUS,
    BUSY_TIMEOUT_MS,
    COUNTERS,
    DB_NAME,
    SIDE_FILES,
    _check_database,
    _configure,
    _connect,
    _make_directory,
    _make_private,
    _rollback,
)
from jobcompd.state.values import Stats


class Database:
    """One open state database: opening (checked, never reset), closing, transactions under one
    lock, statistics. :class:`jobcompd.state.State` adds what is stored in it.

    With ``synchronous = "full"`` the write-ahead log is flushed to disk by a thread of its own
    after each commit that asks for it (:mod:`jobcompd.state._flush`), not inside the commit.
    """

    def __init__(
        self, db: sqlite3.Connection, path: Path, *, readonly: bool, synchronous: str = "FULL"
    ) -> None:
        """Wrap an open, checked connection; use `State.open` instead."""
        self._db: sqlite3.Connection | None = db
        self._lock = threading.Lock()
        self.path = path
        self.readonly = readonly
        self._flusher: Flusher | None = None
        if synchronous == "FULL" and not readonly:
            # Commits write the log; the flusher flushes it. SQLite's own checkpoints only as a
            # backstop: the flusher's run beside the commits.
            db.execute("PRAGMA synchronous = NORMAL")
            db.execute(f"PRAGMA wal_autocheckpoint = {BACKSTOP_CHECKPOINT_PAGES}")
            self._flusher = Flusher(path)

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        synchronous: str = "full",
        readonly: bool = False,
        verify: bool = True,
    ) -> Self:
        """Open (creating if needed) the state in ``directory``.

        ``synchronous`` is ``"full"`` (default: a commit survives power loss once the flusher
        flushed it, right after; see :mod:`jobcompd.state._flush`) or ``"normal"`` (a commit
        survives a crash of jobcompd, not necessarily of the machine). ``readonly`` opens
        an existing state for inspection and creates nothing. ``verify`` runs SQLite's
        ``quick_check`` first; a damaged file is reported, never repaired or replaced.
        """
        mode = _SYNCHRONOUS.get(synchronous.lower())
        if mode is None:
            raise ValueError(
                f"synchronous must be one of {sorted(_SYNCHRONOUS)}, not {synchronous!r}"
            )
        directory = Path(directory).absolute()
        if readonly:
            return cls._open_readonly(directory, verify=verify)
        return cls._open_readwrite(directory, mode, verify=verify)

    @classmethod
    def _open_readonly(cls, directory: Path, *, verify: bool) -> Self:
        path = directory / DB_NAME
        if not path.is_file():
            raise StateError(
                path,
                "there is no state database here",
                f"check state_dir; jobcompd creates {DB_NAME} when it first starts",
            )
        # A cleanly closed WAL database has no -wal or -shm; reading it as immutable avoids
        # creating them. When they exist, a writer may be active and must be respected.
        quiet = not any(_sidecar(path, s).exists() for s in ("-wal", "-shm"))
        params = "mode=ro&immutable=1" if quiet else "mode=ro"
        db = _connect(path, params)
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA query_only = ON")
            new = _check_database(db, path, verify=verify)
        except StateError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            raise _translate(path, "open", exc) from exc
        if new:
            db.close()
            raise StateError(
                path, "the database was never initialised", "start jobcompd once to create it"
            )
        return cls(db, path, readonly=True)

    @classmethod
    def _open_readwrite(cls, directory: Path, synchronous: str, *, verify: bool) -> Self:
        path = directory / DB_NAME
        # The umask is process-wide, but files created meanwhile only end up more private.
        old_umask = os.umask(0o077)
        try:
            created_dir = _make_directory(directory, path)
            exists = path.exists()
            if exists and not path.is_file():
                raise StateError(
                    path, "exists but is not a regular file", _recovery(RECOVER_CORRUPT, path)
                )
            if exists and path.stat().st_size == 0:
                raise StateError(
                    path,
                    "the database file is empty (0 bytes): it is not a state jobcompd wrote, and "
                    "starting afresh would send every record of the log again",
                    _recovery(RECOVER_CORRUPT, path),
                )
            if not exists:
                stale = [s for s in SIDE_FILES if _sidecar(path, s).exists()]
                if stale:
                    raise StateError(
                        path,
                        f"the database is missing but {', '.join(DB_NAME + s for s in stale)} "
                        "is still there (was the database deleted?)",
                        "move the leftover files aside before starting with a fresh state; "
                        "a new database next to an old write-ahead log could be mixed with it",
                    )
            if not os.access(directory, os.W_OK | os.X_OK) or (
                exists and not os.access(path, os.R_OK | os.W_OK)
            ):
                raise StateError(
                    path, "not writable by this process", _recovery(RECOVER_PERMISSIONS, path)
                )
            if not exists:
                _create(path, synchronous)
            db = _connect(path, "mode=rw")
            try:
                _configure(db, path, synchronous, verify=verify)
            except BaseException:
                db.close()
                raise
        finally:
            os.umask(old_umask)
        if created_dir or directory.stat().st_mode & 0o077:
            _make_private(directory, path)
        if not exists:
            for suffix in ("", "-wal", "-shm"):
                with suppress(FileNotFoundError):
                    os.chmod(_sidecar(path, suffix), 0o600)
        return cls(db, path, readonly=False, synchronous=synchronous)

    def close(self) -> None:
        """Close the database; later calls raise `StateError`. Closing twice is harmless."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.close()  # what is committed is on disk before the connection goes
        with self._lock:
            db, self._db = self._db, None
            if db is None:
                return
            try:
                if not self.readonly:
                    db.execute("PRAGMA optimize")
            except sqlite3.Error:
                pass  # only a planner hint; closing matters more
            finally:
                db.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        mode = "closed" if self._db is None else "read-only" if self.readonly else "read-write"
        return f"<State {str(self.path)!r} {mode}>"

    def checkpoint(self) -> bool:
        """Copy the write-ahead log into the database and truncate it; False if SQLite could not.

        After a full disk, this gives the space the log held back to the next commit.
        """
        with self._lock:
            db = self._db
            if db is None or self.readonly:
                return False
            try:
                busy, _, _ = db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error:
                return False
            return not busy

    def stats(self) -> Stats:
        """Numbers for ``jobcompd status`` and metrics: depths, totals, last delivery, file size."""
        with self._reading("read statistics") as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            depth = db.execute("SELECT coalesce(sum(waiting), 0) FROM spool_waiting").fetchone()[0]
            oldest = db.execute("SELECT min(enqueued_at) FROM spool").fetchone()[0]
            deadletters = db.execute("SELECT count(*) FROM deadletter").fetchone()[0]
            quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        return Stats(
            path=str(self.path),
            spool_depth=int(depth),
            oldest_pending_at=oldest,
            deadletter_count=int(deadletters),
            quarantine_count=int(quarantined),
            last_delivered_at=meta.get("last_delivered_at"),
            last_delivered_jobid=meta.get("last_delivered_jobid"),
            created_at=meta.get("created_at"),
            opened_at=meta.get("opened_at"),
            db_bytes=sum(_size(_sidecar(self.path, suffix)) for suffix in ("", "-wal", "-shm")),
            **{name: int(meta.get(name) or 0) for name in COUNTERS},
        )

    @contextmanager
    def _transaction(
        self, action: str, *, synced: bool = True, records: int = 0, wait: bool = True
    ) -> Iterator[sqlite3.Connection]:
        """One write transaction, of ``records`` records read (for the flusher's bound).

        With ``synchronous = "full"``, a ``synced`` transaction is flushed to disk right after its
        commit, by the flusher (it first waits while too many records, or too old a commit, are not
        flushed yet: :meth:`Flusher.admit`); ``synced=False`` ones are flushed with the next flush.
        For what a power loss may only repeat, never lose: settling delivery reports.

        ``wait=False``: raise :class:`Busy` at once, before anything is done, if another thread
        is using the database."""
        if self.readonly:
            raise StateError(self.path, f"cannot {action}: opened read-only", RECOVER_READONLY)
        flusher = self._flusher
        if flusher is not None and synced:
            flusher.admit(records)
        if not self._lock.acquire(blocking=wait):
            raise Busy(action)
        try:
            db = self._connection(action)
            try:
                db.execute("BEGIN IMMEDIATE")
                yield db
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(db)
                raise _translate(self.path, action, exc) from exc
            except BaseException:
                _rollback(db)
                raise
            if flusher is not None and synced:
                flusher.committed(records)
        finally:
            self._lock.release()

    def _settled(self, reports: int) -> None:
        """``reports`` delivery reports were settled by an unsynced transaction."""
        if self._flusher is not None:
            self._flusher.settled(reports)

    @property
    def _unflushed_reports(self) -> int:
        """Delivery reports settled and not on disk yet (0 without a flusher: with ``synchronous =
        "normal"`` nothing is flushed at a commit)."""
        return 0 if self._flusher is None else self._flusher.unflushed_reports

    def _flush(self) -> None:
        """Flush what is committed to disk now and wait for it (with a flusher)."""
        if self._flusher is not None:
            self._flusher.flush()

    @contextmanager
    def _reading(self, action: str) -> Iterator[sqlite3.Connection]:
        with self._lock:
            db = self._connection(action)
            try:
                yield db
            except sqlite3.Error as exc:
                raise _translate(self.path, action, exc) from exc

    def _connection(self, action: str) -> sqlite3.Connection:
        if self._db is None:
            raise StateError(self.path, f"cannot {action}: the state is closed", RECOVER_BUG)
        return self._db


class Busy(Exception):
    """The database is in use by another thread, and the caller asked not to wait for it."""


def _create(path: Path, synchronous: str) -> None:
    """Create the database under a temporary name and rename it into place once it holds its
    schema, so that ``jobcompd.db`` never exists half made: a kill -9 during creation leaves only
    the temporary file (removed at the next start, it never held a record), and an empty
    ``jobcompd.db`` can only be a state damaged from outside — which is refused."""
    new = path.with_name(path.name + ".new")
    for suffix in ("", *SIDE_FILES):
        with suppress(FileNotFoundError):
            os.unlink(_sidecar(new, suffix))
    db = _connect(new, "mode=rwc")
    try:
        _configure(db, new, synchronous, verify=False)
        # One self-contained file to rename: no write-ahead log beside it.
        db.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise _translate(path, "create", exc) from exc
    finally:
        db.close()
    fd = os.open(new, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(new, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
