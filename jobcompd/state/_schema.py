"""The database: its schema, how a file is opened, checked and upgraded, the counters."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote

from jobcompd.state._errors import RECOVER_CORRUPT, RECOVER_PERMISSIONS, StateError, _recovery, _translate

DB_NAME = "jobcompd.db"

SCHEMA_VERSION = 5

# "JCMD": marks the file as jobcompd's, so another program's SQLite file is refused, not adopted.
APPLICATION_ID = 0x4A434D44

BUSY_TIMEOUT_MS = 5000

PAGE_SIZE = 16384
"""Bytes per page of a state created now (SQLite's default is 4096). A batch's payloads then span
a quarter of the pages, so committing it writes and checksums a quarter of the page headers and
write-ahead log frames: about a quarter less time per record. States made earlier keep theirs."""

SIDE_FILES = ("-wal", "-shm", "-journal")

# ``known`` holds the id of every record ever committed (spooled, dead-lettered or delivered, or
# committed as delivered without a spool row, Kafka having acknowledged it before the commit): a
# record is checked against it once, when it is read, and a delivery report only has to settle
# its ``seq``. It is keyed by (jobid, rid), never by the record id alone: ids are
# hashes, so an index on them sends every insert to a random page (with a million ids, one page
# written per record), while job ids mostly grow and keep the work at the index's end.
#
# The spool holds one row per committed batch of records, not one per record: record ``i`` of a
# batch has ``seq`` first_seq + i; ``records`` is the JSON [rids, jobids, payload sizes, sources
# or null when all share ``source``] and ``payloads`` the payloads end to end, stored as ``codec``
# says (:mod:`jobcompd.state._codec`: one Zstandard frame since schema 5). What of a batch
# still waits is in ``spool_waiting`` (a small row rewritten at each delivery report, so the
# payloads are written once and dropped once); a batch leaves when its last record is settled
# (delivered or dead-lettered). ``spool_attempt`` holds the failed sends of a record (rare).
_SCHEMA = (
    """
CREATE TABLE spool (
    first_seq   INTEGER PRIMARY KEY,
    count       INTEGER NOT NULL CHECK (typeof(count) = 'integer' AND count > 0),
    source      TEXT    NOT NULL DEFAULT '',
    enqueued_at REAL    NOT NULL,
    records     BLOB    NOT NULL,
    payloads    BLOB    NOT NULL CHECK (typeof(payloads) = 'blob'),
    codec       INTEGER NOT NULL DEFAULT 0
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
CREATE TABLE spool_waiting (
    first_seq   INTEGER PRIMARY KEY,
    settled     BLOB    NOT NULL,
    waiting     INTEGER NOT NULL CHECK (waiting > 0)
)
""",
    """
CREATE TABLE spool_attempt (
    seq         INTEGER PRIMARY KEY,
    attempts    INTEGER NOT NULL,
    last_error  TEXT
)
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
    ("last_seq", 0),
)

_ADD_COUNTER = "INSERT OR IGNORE INTO meta (key, value) VALUES (?, 0)"

_BUMP = "UPDATE meta SET value = value + ?2 WHERE key = ?1"

_SET = "UPDATE meta SET value = ?2 WHERE key = ?1"

_SPOOL_COLUMNS = "seq, rid, jobid, payload, source, enqueued_at, attempts, last_error"

# The spool of schemas 1 to 3: one row per record.
_SPOOL_V3 = """
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
"""
_KNOWN = next(statement for statement in _SCHEMA if "CREATE TABLE known" in statement)
_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
_I64 = 1 << 63


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
        if new:  # only an empty file takes a page size (a state in use keeps its own)
            db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
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
        # Some builds (Debian's) zero every freed page: a settled batch's payloads would be written
        # a second time, as zeros. They are in the log and in Kafka already; the file is 0700.
        db.execute("PRAGMA secure_delete = FAST")
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
            elif (version := db.execute("PRAGMA user_version").fetchone()[0]) < SCHEMA_VERSION:
                _upgrade(db, version)
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


def _upgrade(db: sqlite3.Connection, version: int) -> None:
    """An older schema → this one, in the open transaction, keeping every record and counter."""
    if version < 3:
        _upgrade_to_3(db)
    if version < 4:
        _upgrade_to_4(db)  # makes the spool of this version
    else:
        # Schema 4 → 5: the spool's rows say how their payloads are stored; the rows written
        # until now hold them as they are.
        db.execute("ALTER TABLE spool ADD COLUMN codec INTEGER NOT NULL DEFAULT 0")


def _upgrade_to_3(db: sqlite3.Connection) -> None:
    """Schemas 1 and 2 → 3: the ids of delivered records and of spooled ones go into ``known``.

    Schema 1 keyed the spool and the delivered ledger by record id alone, 2 by (jobid, rid); both
    checked a new record against the spool, the dead letters and the ledger, and wrote the ledger
    at each delivery report. Spooled and dead-lettered rows are copied as they are, and the
    spool's sequence counter is carried over.
    """
    counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
    db.execute("ALTER TABLE spool RENAME TO spool_old")
    db.execute(_SPOOL_V3)
    db.execute(_KNOWN)
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


_RowV3 = tuple[int, str, int, bytes, str, float, int, "str | None"]


def _upgrade_to_4(db: sqlite3.Connection) -> None:
    """Schema 3 → 4: the spool's rows become batches (each run of consecutive seqs read at the same
    moment), their failed sends go to ``spool_attempt``; the seq counter moves to ``meta``."""
    counter = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'spool'").fetchone()
    db.execute("ALTER TABLE spool RENAME TO spool_v3")
    for statement in _SCHEMA:
        if statement.lstrip().startswith(("CREATE TABLE spool ", "CREATE TABLE spool_")):
            db.execute(statement)
    run: list[_RowV3] = []
    for row in db.execute(f"SELECT {_SPOOL_COLUMNS} FROM spool_v3 ORDER BY seq"):
        if run and (row[0] != run[-1][0] + 1 or row[5] != run[-1][5] or len(run) >= 4096):
            _convert(db, run)
            run = []
        run.append(row)
    if run:
        _convert(db, run)
    db.execute(
        "INSERT INTO spool_attempt (seq, attempts, last_error) SELECT seq, attempts, last_error"
        " FROM spool_v3 WHERE attempts > 0 OR last_error IS NOT NULL"
    )
    last = db.execute(
        "SELECT max(?, coalesce((SELECT max(seq) FROM spool_v3), 0),"
        " coalesce((SELECT max(seq) FROM deadletter), 0))",
        (0 if counter is None else counter[0],),
    ).fetchone()[0]
    db.execute("DROP TABLE spool_v3")
    db.execute("DELETE FROM sqlite_sequence WHERE name IN ('spool', 'spool_v3')")
    db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (last,))


def _convert(db: sqlite3.Connection, run: list[_RowV3]) -> None:
    """One batch of the schema-3 spool rows ``run`` (consecutive seqs)."""
    from jobcompd.state._spool import _insert_batch  # the one writer of the batch layout

    _insert_batch(
        db, run[0][0], [r[1] for r in run], [r[2] for r in run], [r[3] for r in run], [r[4] for r in run],
        run[0][5],
    )


def _bump(db: sqlite3.Connection, **counters: int) -> None:
    changes = [(name, n) for name, n in counters.items() if n]
    if changes:
        db.executemany(_BUMP, changes)


def _rollback(db: sqlite3.Connection) -> None:
    if db.in_transaction:
        try:
            db.execute("ROLLBACK")
        except sqlite3.Error:
            pass  # SQLite already rolled back on its own (it does on some I/O errors)


def _signed(value: int) -> int:
    # inode and device numbers are unsigned 64-bit; SQLite integers are signed.
    return value - (1 << 64) if value >= _I64 else value


def _unsigned(value: int) -> int:
    return value + (1 << 64) if value < 0 else value
