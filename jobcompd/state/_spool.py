"""The spool: records read and not yet acknowledged, committed with the position; delivery reports."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from itertools import accumulate, repeat
from typing import cast

import orjson

from jobcompd.identity import Position
from jobcompd.state._database import Database
from jobcompd.state._errors import _rejected
from jobcompd.state._positions import _UPSERT_POSITION, _position_row
from jobcompd.state._schema import _SET, _SPOOL_COLUMNS, _bump
from jobcompd.state.values import (
    _JOBID,
    _PAYLOAD,
    _RID,
    _SOURCE,
    BatchResult,
    Delivery,
    NewRecord,
    QuarantinedLine,
    RecordColumns,
    SpooledRecord,
    _Columns,
)

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


class Spool(Database):
    """Committing what was read (records, quarantined lines, the position) and settling deliveries."""

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
