"""Durable state: the spool of undelivered records, dead letters, quarantined lines, read positions.

Everything lives in one SQLite database, ``<state_dir>/jobcompd.db``, in WAL mode. The promise it
keeps: every record read from the log is either delivered (acknowledged by Kafka) or held here with
a reason an operator can see. What was read and where the reader stands are committed in one
transaction (`State.commit_batch`), so a crash at any instant neither loses a record nor re-reads
one. Records leave the spool only through `State.mark_delivered` (a delivery report), or on purpose
through the dead-letter commands, which are counted.

Failures are raised as `StateError`, which names the file, the reason and what an operator can do;
a failed call has changed nothing, and the `State` stays usable once the cause (a full disk, a
read-only mount) is fixed.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from itertools import accumulate, repeat
from operator import itemgetter
from pathlib import Path
from types import TracebackType
from typing import Any, NamedTuple, Protocol, Self, cast
from urllib.parse import quote

import orjson

from jobcompd.identity import Position

__all__ = [
    "DB_NAME",
    "SCHEMA_VERSION",
    "BatchResult",
    "DeadLetter",
    "Delivery",
    "NewRecord",
    "RecordColumns",
    "QuarantinedLine",
    "Position",
    "SpooledRecord",
    "State",
    "StateError",
]

DB_NAME = "jobcompd.db"
SCHEMA_VERSION = 3
# "JCMD": marks the file as jobcompd's, so another program's SQLite file is refused, not adopted.
APPLICATION_ID = 0x4A434D44
BUSY_TIMEOUT_MS = 5000
SIDE_FILES = ("-wal", "-shm", "-journal")

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

# ``known`` holds the id of every record ever spooled (and so spooled, dead-lettered or delivered):
# a record is checked against it once, when it is read, and a delivery report only has to delete
# its spool row by ``seq``. It is keyed by (jobid, rid), never by the record id alone: ids are
# hashes, so an index on them sends every insert to a random page (with a million ids, one page
# written per record), while job ids mostly grow and keep the work at the index's end.
_SCHEMA = (
    """
CREATE TABLE spool (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    rid         TEXT    NOT NULL CHECK (typeof(rid) = 'text' AND rid <> ''),
    jobid       INTEGER NOT NULL CHECK (typeof(jobid) = 'integer'),
    payload     BLOB    NOT NULL CHECK (typeof(payload) = 'blob'),
    source      TEXT    NOT NULL DEFAULT '',
    enqueued_at REAL    NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
)
""",
    """
CREATE TABLE deadletter (
    seq         INTEGER PRIMARY KEY,
    rid         TEXT    NOT NULL UNIQUE,
    jobid       INTEGER NOT NULL,
    payload     BLOB    NOT NULL,
    source      TEXT    NOT NULL,
    enqueued_at REAL    NOT NULL,
    attempts    INTEGER NOT NULL,
    last_error  TEXT,
    reason      TEXT    NOT NULL CHECK (typeof(reason) = 'text' AND reason <> ''),
    failed_at   REAL    NOT NULL
)
""",
    """
CREATE TABLE known (
    jobid       INTEGER NOT NULL,
    rid         TEXT    NOT NULL,
    known_at    REAL    NOT NULL,
    PRIMARY KEY (jobid, rid)
) WITHOUT ROWID
""",
    """
CREATE TABLE quarantine (
    id          INTEGER PRIMARY KEY,
    source      TEXT    NOT NULL,
    line_no     INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    raw         BLOB    NOT NULL CHECK (typeof(raw) = 'blob'),
    reason      TEXT    NOT NULL CHECK (typeof(reason) = 'text' AND reason <> ''),
    at          REAL    NOT NULL
)
""",
    """
CREATE TABLE position (
    source      TEXT PRIMARY KEY,
    path        TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    byte_offset INTEGER NOT NULL CHECK (typeof(byte_offset) = 'integer' AND byte_offset >= 0),
    line_no     INTEGER NOT NULL CHECK (typeof(line_no) = 'integer' AND line_no >= 0),
    inode       INTEGER NOT NULL,
    dev         INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    updated_at  REAL    NOT NULL
) WITHOUT ROWID
""",
    """
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value
) WITHOUT ROWID
""",
)

COUNTERS = (
    "spooled_total",
    "already_known_total",
    "delivered_total",
    "deadlettered_total",
    "retried_total",
    "purged_total",
    "quarantined_total",
    "pruned_total",
    "ambiguous_total",
    "quarantine_purged_total",
    "quarantine_released_total",
)
_META_INITIAL = (
    *((name, 0) for name in COUNTERS),
    ("created_at", None),
    ("opened_at", None),
    ("last_delivered_at", None),
    ("last_delivered_jobid", None),
)

_SPOOL_COLUMNS = "seq, rid, jobid, payload, source, enqueued_at, attempts, last_error"
_DEADLETTER_COLUMNS = "seq, rid, jobid, payload, source, reason, failed_at, attempts"
_POSITION_COLUMNS = "source, path, fingerprint, byte_offset, line_no, inode, dev, size, updated_at"

# New records go in with two statements per batch, not one per record: ?1 is a JSON array of
# [rid, jobid, start, size, source] (orjson writes it in C), ?2 the payloads end to end, each one
# cut out with substr(). Per record that is half the cost of binding five parameters in Python.
# The records not yet known are spooled, then all of them are known.
_INSERT_NEW = """
INSERT INTO spool (rid, jobid, payload, source, enqueued_at)
SELECT rid, jobid, substr(?2, start, size), source, ?3
FROM (
    SELECT key,
           json_extract(value, '$[0]') AS rid, json_extract(value, '$[1]') AS jobid,
           json_extract(value, '$[2]') AS start, json_extract(value, '$[3]') AS size,
           json_extract(value, '$[4]') AS source
    FROM json_each(?1)
) AS new
WHERE NOT EXISTS (SELECT 1 FROM known k WHERE k.jobid = new.jobid AND k.rid = new.rid)
ORDER BY key
"""
_INSERT_KNOWN = """
INSERT INTO known (jobid, rid, known_at)
SELECT json_extract(value, '$[1]'), json_extract(value, '$[0]'), ?3 FROM json_each(?1) WHERE true
ON CONFLICT (jobid, rid) DO NOTHING
"""
_INSERT_CHUNK = 10_000
_INSERT_QUARANTINE = """
INSERT INTO quarantine (source, line_no, byte_offset, raw, reason, at) VALUES (?, ?, ?, ?, ?, ?)
"""
_UPSERT_POSITION = f"""
INSERT INTO position ({_POSITION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (source) DO UPDATE SET
    path = excluded.path, fingerprint = excluded.fingerprint, byte_offset = excluded.byte_offset,
    line_no = excluded.line_no, inode = excluded.inode, dev = excluded.dev, size = excluded.size,
    updated_at = excluded.updated_at
"""
_SPOOL_TO_DEADLETTER = """
INSERT INTO deadletter
    (seq, rid, jobid, payload, source, enqueued_at, attempts, last_error, reason, failed_at)
SELECT seq, rid, jobid, payload, source, enqueued_at, attempts, last_error, ?2, ?3
FROM spool WHERE seq = ?1
"""
_DEADLETTER_TO_SPOOL = """
INSERT INTO spool (rid, jobid, payload, source, enqueued_at, attempts, last_error)
SELECT rid, jobid, payload, source, enqueued_at, attempts, reason
FROM deadletter WHERE rid = ?1
"""
_ADD_COUNTER = "INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)"
_BUMP = "UPDATE meta SET value = value + ?2 WHERE key = ?1"
_SET = "UPDATE meta SET value = ?2 WHERE key = ?1"

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL", "extra": "EXTRA"}
_I64 = 1 << 63


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


class NewRecord(NamedTuple):
    """A record just read from the log, ready to be spooled; ``payload`` is the JSON to send."""

    rid: str
    jobid: int
    payload: bytes
    source: str = ""


_RID, _JOBID, _PAYLOAD, _SOURCE = map(itemgetter, range(4))


class RecordColumns(Protocol):
    """New records of one source as columns (e.g. :class:`jobcompd.batch.RecordBatch`)."""

    @property
    def rids(self) -> Sequence[str]: ...

    @property
    def jobids(self) -> Sequence[int]: ...

    @property
    def payloads(self) -> Sequence[bytes]: ...


class _Columns(NamedTuple):
    rids: Sequence[str]
    jobids: Sequence[int]
    payloads: Sequence[bytes]
    sources: Sequence[str]


def _columns(records: Sequence[NewRecord] | RecordColumns, source: str) -> _Columns:
    """``records`` as columns, without the repeats of a record id (a line read twice in a batch)."""
    if not hasattr(records, "rids"):  # NewRecord values (a RecordBatch is a tuple too)
        records = cast(Sequence[NewRecord], records)
        cols = _Columns(
            list(map(_RID, records)),
            list(map(_JOBID, records)),
            list(map(_PAYLOAD, records)),
            list(map(_SOURCE, records)),
        )
    else:
        records = cast(RecordColumns, records)
        n = len(records.rids)
        cols = _Columns(records.rids, records.jobids, records.payloads, [source] * n)
    if len(set(cols.rids)) == len(cols.rids):
        return cols
    first: dict[str, int] = {}
    for i, rid in enumerate(cols.rids):
        first.setdefault(rid, i)
    keep = sorted(first.values())
    return _Columns(
        [cols.rids[i] for i in keep],
        [cols.jobids[i] for i in keep],
        [cols.payloads[i] for i in keep],
        [cols.sources[i] for i in keep],
    )


class SpooledRecord(NamedTuple):
    """A record waiting in the spool for its delivery report; ``seq`` gives the send order."""

    seq: int
    rid: str
    jobid: int
    payload: bytes
    source: str
    enqueued_at: float
    attempts: int
    last_error: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A record taken out of the send loop, with the reason, until an operator retries or purges it."""

    seq: int
    rid: str
    jobid: int
    payload: bytes
    source: str
    reason: str
    failed_at: float
    attempts: int


@dataclass(frozen=True, slots=True)
class QuarantinedLine:
    """A log line that could not be turned into a record, kept with the reason.

    ``at`` and ``id`` are filled in when the line is stored; leave them out when quarantining.
    """

    source: str
    line_no: int
    offset: int
    raw: bytes
    reason: str
    at: float | None = field(default=None, compare=False)
    id: int | None = field(default=None, compare=False)


class Delivery(NamedTuple):
    """A successful delivery report: the spooled record ``seq`` is in Kafka at ``partition``/``offset``."""

    seq: int
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class BatchResult:
    """What `State.commit_batch` did: new records spooled, records it already held, lines quarantined.

    ``fresh`` holds the spooled records as `State.pending` would return them, so a sender can take
    them from memory; it is empty when the batch held records already known (`pending` finds
    the others then).
    """

    spooled: int
    already_known: int
    quarantined: int
    fresh: Sequence[SpooledRecord] = field(default=(), compare=False, repr=False)


class State:
    """The crash-safe store behind jobcompd; one per state directory, shared by its threads.

    Build it with `State.open`. Every method is thread-safe, and every method that changes
    something is one transaction: it happens completely or not at all.
    """

    def __init__(self, db: sqlite3.Connection, path: Path, *, readonly: bool) -> None:
        """Wrap an open, checked connection; use `State.open` instead."""
        self._db: sqlite3.Connection | None = db
        self._lock = threading.Lock()
        self.path = path
        self.readonly = readonly

    # -- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        directory: str | Path,
        *,
        synchronous: str = "full",
        readonly: bool = False,
        verify: bool = True,
    ) -> State:
        """Open (creating if needed) the state in ``directory``.

        ``synchronous`` is ``"full"`` (default: a commit survives power loss) or ``"normal"``
        (a commit survives a crash of jobcompd, not necessarily of the machine). ``readonly`` opens
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
    def _open_readonly(cls, directory: Path, *, verify: bool) -> State:
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
    def _open_readwrite(cls, directory: Path, synchronous: str, *, verify: bool) -> State:
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
            db = _connect(path, "mode=rw" if exists else "mode=rwc")
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
        return cls(db, path, readonly=False)

    def close(self) -> None:
        """Close the database; later calls raise `StateError`. Closing twice is harmless."""
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

    # -- reading side: what the tailer commits ---------------------------------------------------

    def commit_batch(
        self,
        records: Sequence[NewRecord] | RecordColumns,
        *,
        source: str = "",
        position: Position | None = None,
        quarantined: Sequence[QuarantinedLine] = (),
        ambiguous: int = 0,
        released: Sequence[int] = (),
    ) -> BatchResult:
        """Spool ``records``, keep ``quarantined`` lines and move the read ``position``: all or nothing.

        ``records`` are :class:`NewRecord` values, or columns of records all read from ``source``.

        ``ambiguous`` counts the records read with a choice between readings; ``released`` are
        ids of quarantined lines these records were read from again (they leave the quarantine
        in the same transaction). A record whose
        ``rid`` is already spooled, dead-lettered or delivered (or repeated in this batch) is
        skipped and counted as ``already_known``.
        """
        new = _columns(records, source)
        count = len(records) if not hasattr(records, "rids") else len(records.rids)
        if not count and not quarantined and position is None and not released:
            return BatchResult(0, 0, 0)
        now = time.time()
        total = len(new.rids)
        with self._transaction("commit a batch") as db:
            spooled = last_seq = 0
            for start in range(0, total, _INSERT_CHUNK):
                try:
                    rows = _new_rows(new, slice(start, start + _INSERT_CHUNK), now)
                except TypeError as exc:  # a payload that is not bytes, a value JSON cannot hold
                    raise _rejected(self.path, "commit a batch", exc) from exc
                inserted = db.execute(_INSERT_NEW, rows)
                spooled += inserted.rowcount
                last_seq = inserted.lastrowid or 0
                db.execute(_INSERT_KNOWN, rows)
            if quarantined:
                db.executemany(
                    _INSERT_QUARANTINE,
                    [(q.source, q.line_no, q.offset, q.raw, q.reason, now) for q in quarantined],
                )
            if position is not None:
                db.execute(_UPSERT_POSITION, _position_row(position, now))
            gone = sum(
                db.execute("DELETE FROM quarantine WHERE id = ?", (i,)).rowcount for i in released
            )
            _bump(
                db,
                spooled_total=spooled,
                already_known_total=count - spooled,
                quarantined_total=len(quarantined),
                ambiguous_total=ambiguous,
                quarantine_released_total=gone,
            )
        fresh: Sequence[SpooledRecord] = ()
        if spooled and spooled == total:
            # One INSERT per chunk, rows in batch order, AUTOINCREMENT: the seqs are consecutive.
            fresh = _spooled(new, range(last_seq - spooled + 1, last_seq + 1), now)
        return BatchResult(spooled, count - spooled, len(quarantined), fresh)

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

    def position(self, key: str) -> Position | None:
        """The committed read position stored under ``key``, or None if it was never read."""
        with self._reading("read a position") as db:
            row = db.execute(
                f"SELECT {_POSITION_COLUMNS} FROM position WHERE source = ?", (key,)
            ).fetchone()
        return None if row is None else _position(row)

    def positions(self) -> list[Position]:
        """Every committed read position, ordered by key."""
        with self._reading("read positions") as db:
            rows = db.execute(
                f"SELECT {_POSITION_COLUMNS} FROM position ORDER BY source"
            ).fetchall()
        return [_position(row) for row in rows]

    def forget_position(self, key: str) -> bool:
        """Drop the read position of a file that is gone for good; True if there was one."""
        with self._transaction("forget a position") as db:
            return db.execute("DELETE FROM position WHERE source = ?", (key,)).rowcount > 0

    # -- sending side: what the producer reads and acknowledges -----------------------------------

    def pending(self, *, after_seq: int = 0, limit: int = 1000) -> list[SpooledRecord]:
        """Up to ``limit`` spooled records with ``seq`` greater than ``after_seq``, in seq order."""
        with self._reading("read the spool") as db:
            rows = db.execute(
                f"SELECT {_SPOOL_COLUMNS} FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                (after_seq, limit),
            ).fetchall()
        return list(map(SpooledRecord._make, rows))

    def spool_depth(self) -> int:
        """How many records wait for a delivery report."""
        with self._reading("count the spool") as db:
            return int(db.execute("SELECT count(*) FROM spool").fetchone()[0])

    def oldest_pending_at(self) -> float | None:
        """When the longest-waiting spooled record was first read, or None if the spool is empty."""
        with self._reading("read the spool") as db:
            value = db.execute("SELECT min(enqueued_at) FROM spool").fetchone()[0]
        return None if value is None else float(value)

    def mark_delivered(self, deliveries: Sequence[Delivery]) -> int:
        """Record successful delivery reports: the records leave the spool (their ids stay known).

        A report for a record that was dead-lettered meanwhile resolves the dead letter too (the
        record is in Kafka). Reports for unknown or already delivered records are ignored. Returns
        how many records were newly marked delivered.
        """
        if not deliveries:
            return 0
        now = time.time()
        seqs = sorted({d.seq for d in deliveries})
        with self._transaction("record deliveries") as db:
            last_jobid = _last_jobid(db, deliveries)
            if last_jobid is None:
                return 0
            removed = db.executemany(
                "DELETE FROM spool WHERE seq BETWEEN ? AND ?", _runs(seqs)
            ).rowcount
            if removed < len(seqs) and db.execute(
                "SELECT EXISTS (SELECT 1 FROM deadletter)"
            ).fetchone()[0]:
                removed += db.executemany(
                    "DELETE FROM deadletter WHERE seq = ?", [(seq,) for seq in seqs]
                ).rowcount
            _bump(db, delivered_total=removed)
            db.executemany(_SET, [("last_delivered_at", now), ("last_delivered_jobid", last_jobid)])
        return removed

    def record_attempt(self, seq: int, error: str | None) -> None:
        """Count a failed (retriable) send of spooled record ``seq``, remember the error; it stays."""
        self.record_attempts({seq: error})

    def record_attempts(self, errors: Mapping[int, str | None]) -> int:
        """`record_attempt` for many records in one transaction; returns how many were spooled."""
        if not errors:
            return 0
        with self._transaction("record send attempts") as db:
            return db.executemany(
                "UPDATE spool SET attempts = attempts + 1, last_error = ?2 WHERE seq = ?1",
                list(errors.items()),
            ).rowcount

    # -- dead letters, quarantine, known ids: what the operator sees ------------------------------

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Move spooled record ``seq`` to the dead letters with ``reason``; False if not spooled."""
        return self.dead_letter_many({seq: reason}) == 1

    def dead_letter_many(self, reasons: Mapping[int, str]) -> int:
        """`dead_letter` for many records in one transaction; returns how many were moved."""
        if not reasons:
            return 0
        now = time.time()
        with self._transaction("dead-letter records") as db:
            moved = db.executemany(
                _SPOOL_TO_DEADLETTER, [(seq, reason, now) for seq, reason in reasons.items()]
            ).rowcount
            db.executemany("DELETE FROM spool WHERE seq = ?", [(seq,) for seq in reasons])
            _bump(db, deadlettered_total=moved)
        return moved

    def dead_letters(self, *, limit: int | None = None) -> list[DeadLetter]:
        """The dead letters, oldest first."""
        with self._reading("read dead letters") as db:
            rows = db.execute(
                f"SELECT {_DEADLETTER_COLUMNS} FROM deadletter ORDER BY seq LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [DeadLetter(*row) for row in rows]

    def retry_dead_letters(self, rids: Sequence[str] | None = None) -> int:
        """Put dead letters (all, or those in ``rids``) back at the end of the spool.

        They keep their attempt count; their dead-letter reason becomes ``last_error``. Returns how
        many were moved.
        """
        with self._transaction("retry dead letters") as db:
            found = self._select_dead_letters(db, rids)
            db.executemany(_DEADLETTER_TO_SPOOL, [(rid,) for _, rid in found])
            db.executemany("DELETE FROM deadletter WHERE rid = ?", [(rid,) for _, rid in found])
            _bump(db, retried_total=len(found))
        return len(found)

    def purge_dead_letters(self, rids: Sequence[str] | None = None) -> int:
        """Drop dead letters (all, or those in ``rids``) for good; counted as ``purged_total``."""
        with self._transaction("purge dead letters") as db:
            found = self._select_dead_letters(db, rids)
            db.executemany("DELETE FROM deadletter WHERE rid = ?", [(rid,) for _, rid in found])
            _bump(db, purged_total=len(found))
        return len(found)

    @staticmethod
    def _select_dead_letters(
        db: sqlite3.Connection, rids: Sequence[str] | None
    ) -> list[tuple[int, str]]:
        if rids is None:
            return db.execute("SELECT seq, rid FROM deadletter ORDER BY seq").fetchall()
        found = {}
        for rid in rids:
            row = db.execute("SELECT seq, rid FROM deadletter WHERE rid = ?", (rid,)).fetchone()
            if row is not None:
                found[row[1]] = row
        return sorted(found.values())

    def quarantined(self, *, limit: int | None = None) -> list[QuarantinedLine]:
        """The quarantined lines, in the order they were read."""
        with self._reading("read quarantined lines") as db:
            rows = db.execute(
                "SELECT source, line_no, byte_offset, raw, reason, at, id FROM quarantine "
                "ORDER BY id LIMIT ?",
                (-1 if limit is None else limit,),
            ).fetchall()
        return [QuarantinedLine(*row) for row in rows]

    def quarantined_by_id(self, ids: Sequence[int] | None = None) -> list[QuarantinedLine]:
        """The quarantined lines with these ids (all for None), in the order they were read."""
        lines = self.quarantined()
        if ids is None:
            return lines
        wanted = set(ids)
        return [q for q in lines if q.id in wanted]

    def purge_quarantined(self, ids: Sequence[int] | None = None) -> int:
        """Drop quarantined lines (all, or those with ``ids``) on purpose; counted."""
        with self._transaction("purge quarantined lines") as db:
            if ids is None:
                gone = db.execute("DELETE FROM quarantine").rowcount
            else:
                gone = sum(
                    db.execute("DELETE FROM quarantine WHERE id = ?", (i,)).rowcount for i in ids
                )
            _bump(db, quarantine_purged_total=gone)
        return gone

    def is_known(self, rid: str, jobid: int) -> bool:
        """Whether record ``rid`` of job ``jobid`` was ever spooled (and so is spooled, dead-lettered
        or delivered)."""
        with self._reading("look up a record") as db:
            row = db.execute(
                "SELECT EXISTS (SELECT 1 FROM known WHERE jobid = ? AND rid = ?)", (jobid, rid)
            ).fetchone()
        return bool(row[0])

    def prune_delivered(self, older_than: float, *, limit: int | None = None) -> int:
        """Forget the ids of records read before ``older_than`` (a Unix time) and since delivered.

        Known ids only guard against sending a record twice when a log is read again; pruned ids
        would be sent again by a re-read of the same lines. Ids of records still spooled or
        dead-lettered are kept (they were read no earlier than the oldest of those). ``limit``
        forgets at most that many (the oldest jobs first), so a big prune runs in small steps.
        Returns how many ids were forgotten.
        """
        bound = (
            "min(?1, coalesce((SELECT min(enqueued_at) FROM spool), ?1),"
            " coalesce((SELECT min(enqueued_at) FROM deadletter), ?1))"
        )
        with self._transaction("prune the known record ids") as db:
            if limit is None:
                pruned = db.execute(f"DELETE FROM known WHERE known_at < {bound}", (older_than,)).rowcount
            else:
                pruned = db.execute(
                    f"DELETE FROM known WHERE (jobid, rid) IN (SELECT jobid, rid FROM known"
                    f" WHERE known_at < {bound} LIMIT ?2)",
                    (older_than, limit),
                ).rowcount
            _bump(db, pruned_total=pruned)
        return pruned

    def stats(self) -> dict[str, object]:
        """Numbers for ``jobcompd status`` and metrics: depths, totals, last delivery, file size."""
        with self._reading("read statistics") as db:
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            depth, oldest = db.execute("SELECT count(*), min(enqueued_at) FROM spool").fetchone()
            deadletters = db.execute("SELECT count(*) FROM deadletter").fetchone()[0]
            quarantined = db.execute("SELECT count(*) FROM quarantine").fetchone()[0]
        result: dict[str, object] = {
            "path": str(self.path),
            "spool_depth": depth,
            "oldest_pending_at": oldest,
            "deadletter_count": deadletters,
            "quarantine_count": quarantined,
            "last_delivered_at": meta.get("last_delivered_at"),
            "last_delivered_jobid": meta.get("last_delivered_jobid"),
            "created_at": meta.get("created_at"),
            "opened_at": meta.get("opened_at"),
        }
        result.update({name: meta.get(name, 0) for name in COUNTERS})
        result["db_bytes"] = sum(
            _size(_sidecar(self.path, suffix)) for suffix in ("", "-wal", "-shm")
        )
        return result

    # -- transactions ----------------------------------------------------------------------------

    @contextmanager
    def _transaction(self, action: str) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            raise StateError(self.path, f"cannot {action}: opened read-only", RECOVER_READONLY)
        with self._lock:
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


# -- opening helpers -----------------------------------------------------------------------------


def _make_directory(directory: Path, path: Path) -> bool:
    if directory.is_dir():
        return False
    try:
        directory.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        if directory.is_dir():
            return False
        raise StateError(
            path, f"{directory} exists and is not a directory", _recovery(RECOVER_PERMISSIONS, path)
        ) from None
    except OSError as exc:
        raise StateError(
            path,
            f"cannot create the state directory: {exc.strerror or exc}",
            _recovery(RECOVER_PERMISSIONS, path),
            transient=True,
        ) from exc
    return True


def _make_private(directory: Path, path: Path) -> None:
    """The state directory holds every record's payload: only its owner may read it (0700)."""
    try:
        os.chmod(directory, 0o700)
    except OSError as exc:
        raise StateError(
            path,
            f"cannot make the state directory private (mode 0700): {exc.strerror or exc}",
            f"run as the owner of {directory}, or `chmod 0700 {directory}`",
        ) from exc


def _connect(path: Path, params: str) -> sqlite3.Connection:
    try:
        return sqlite3.connect(
            f"file:{quote(str(path))}?{params}",
            uri=True,
            isolation_level=None,
            check_same_thread=False,
            timeout=BUSY_TIMEOUT_MS / 1000,
            cached_statements=64,
        )
    except sqlite3.Error as exc:
        raise _translate(path, "open", exc) from exc


def _configure(db: sqlite3.Connection, path: Path, synchronous: str, *, verify: bool) -> None:
    try:
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        new = _check_database(db, path, verify=verify)
        journal = db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(journal).lower() != "wal":
            raise StateError(
                path,
                f"SQLite refused write-ahead logging (journal mode stays {journal!r})",
                "put state_dir on a local filesystem (WAL needs shared memory; NFS will not do)",
            )
        db.execute(f"PRAGMA synchronous = {synchronous}")
        db.execute("PRAGMA cache_size = -2048")  # 2 MiB: RSS stays bounded at a 1M backlog
        db.execute("PRAGMA journal_size_limit = 67108864")
        db.execute("PRAGMA temp_store = MEMORY")
        now = time.time()
        db.execute("BEGIN IMMEDIATE")
        try:
            if new:
                for statement in _SCHEMA:
                    db.execute(statement)
                db.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", _META_INITIAL)
                db.execute(_SET, ("created_at", now))
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            elif db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                _upgrade(db)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # Counters added by later versions start at 0 in an older state.
            db.executemany(_ADD_COUNTER, [(name,) for name in COUNTERS])
            # Writing here proves at start-up, not at the first batch, that the state is writable.
            db.execute(_SET, ("opened_at", now))
            db.execute("COMMIT")
        except BaseException:
            _rollback(db)
            raise
    except sqlite3.Error as exc:
        raise _translate(path, "open", exc) from exc


def _check_database(db: sqlite3.Connection, path: Path, *, verify: bool) -> bool:
    """Refuse a file that is not jobcompd's, is newer, or is damaged; True if it is empty."""
    app_id = db.execute("PRAGMA application_id").fetchone()[0]
    version = db.execute("PRAGMA user_version").fetchone()[0]
    tables = db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app_id == 0 and version == 0 and tables == 0:
        return True
    if app_id != APPLICATION_ID:
        raise StateError(
            path,
            f"not a jobcompd state database (application_id {app_id:#x})",
            "point state_dir at jobcompd's own directory, or move this file aside",
        )
    if version > SCHEMA_VERSION:
        raise StateError(
            path,
            f"written by a newer jobcompd (schema version {version}; this one reads up to "
            f"{SCHEMA_VERSION})",
            "run that newer jobcompd, or stop jobcompd and move the state directory aside "
            "(its undelivered records can be replayed with `jobcompd replay` by the newer version)",
        )
    if version < 1:
        raise StateError(
            path, f"unknown schema version {version}", _recovery(RECOVER_CORRUPT, path)
        )
    if verify:
        problems = [
            line for row in db.execute("PRAGMA quick_check(5)") for line in row[0].splitlines()
        ]
        if problems != ["ok"]:
            raise StateError(
                path,
                "the database is damaged: " + "; ".join(problems),
                _recovery(RECOVER_CORRUPT, path),
            )
    return False


def _upgrade(db: sqlite3.Connection) -> None:
    """Schemas 1 and 2 → 3: the ids of delivered records and of spooled ones go into ``known``.

    Schema 1 keyed the spool and the delivered ledger by record id alone, 2 by (jobid, rid); both
    checked a new record against the spool, the dead letters and the ledger, and wrote the ledger
    at each delivery report. Spooled and dead-lettered rows are copied as they are, and the
    spool's sequence counter is carried over.
    """
    counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
    db.execute("ALTER TABLE spool RENAME TO spool_old")
    db.execute(_SCHEMA[0])
    db.execute(_SCHEMA[2])
    db.execute(f"INSERT INTO spool ({_SPOOL_COLUMNS}) SELECT {_SPOOL_COLUMNS} FROM spool_old")
    for table, at in (("delivered", "delivered_at"), ("spool", "enqueued_at"), ("deadletter", "enqueued_at")):
        db.execute(
            f"INSERT INTO known (jobid, rid, known_at) SELECT jobid, rid, {at} FROM {table} WHERE true"
            " ON CONFLICT (jobid, rid) DO NOTHING"
        )
    db.execute("DROP TABLE spool_old")
    db.execute("DROP TABLE delivered")
    db.execute("DELETE FROM sqlite_sequence WHERE name IN ('spool', 'spool_old')")
    db.execute(
        "INSERT INTO sqlite_sequence (name, seq) "
        "SELECT 'spool', max(?, coalesce((SELECT max(seq) FROM spool), 0))",
        (0 if counter is None else counter[0],),
    )


# -- transaction helpers --------------------------------------------------------------------------


def _new_rows(new: _Columns, part: slice, now: float) -> tuple[bytes, bytes, float]:
    """The parameters of ``_INSERT_NEW`` for the records ``part`` of ``new``."""
    payloads = new.payloads[part]
    sizes = list(map(len, payloads))
    starts = accumulate(sizes, initial=1)  # substr() counts from 1; one start too many, zip stops
    rows = zip(new.rids[part], new.jobids[part], starts, sizes, new.sources[part], strict=False)
    return orjson.dumps(list(rows)), b"".join(payloads), now


def _spooled(new: _Columns, seqs: range, now: float) -> list[SpooledRecord]:
    n = len(new.rids)
    return list(
        map(
            SpooledRecord,
            seqs,
            new.rids,
            new.jobids,
            new.payloads,
            new.sources,
            repeat(now, n),
            repeat(0, n),
            repeat(None, n),
        )
    )


def _runs(seqs: Sequence[int]) -> list[tuple[int, int]]:
    """Sorted, distinct ``seqs`` as (first, last) of each run of consecutive numbers."""
    runs = []
    first = last = seqs[0]
    for seq in seqs[1:]:
        if seq != last + 1:
            runs.append((first, last))
            first = seq
        last = seq
    runs.append((first, last))
    return runs


def _bump(db: sqlite3.Connection, **counters: int) -> None:
    changes = [(name, n) for name, n in counters.items() if n]
    if changes:
        db.executemany(_BUMP, changes)


def _last_jobid(db: sqlite3.Connection, deliveries: Sequence[Delivery]) -> int | None:
    for delivery in reversed(deliveries):
        row = db.execute(
            "SELECT jobid FROM spool WHERE seq = ?1"
            " UNION ALL SELECT jobid FROM deadletter WHERE seq = ?1",
            (delivery.seq,),
        ).fetchone()
        if row is not None:
            return int(row[0])
    return None


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back on its own (it does on some I/O errors)


# -- values ---------------------------------------------------------------------------------------


def _position_row(p: Position, now: float) -> tuple[object, ...]:
    return (
        p.key,
        p.path,
        p.fingerprint,
        p.offset,
        p.line_no,
        _signed(p.inode),
        _signed(p.dev),
        p.offset,  # the "size" column: what the file held up to the position
        now,
    )


def _position(row: Any) -> Position:
    key, path, fingerprint, offset, line_no, inode, dev, _, updated_at = row
    return Position(
        key,
        path,
        fingerprint,
        offset,
        line_no,
        _unsigned(inode),
        _unsigned(dev),
        updated_at,
    )


def _signed(value: int) -> int:
    # inode and device numbers are unsigned 64-bit; SQLite integers are signed.
    return value - (1 << 64) if value >= _I64 else value


def _unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value


# -- errors ---------------------------------------------------------------------------------------


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
