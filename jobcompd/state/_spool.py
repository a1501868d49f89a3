"""The spool: records read and not yet acknowledged, committed with the position; delivery reports.

Records are spooled by batch — one row for the records of a commit, payloads end to end — and
settled one by one (see the schema's notes in :mod:`jobcompd.state._schema`).
"""

from __future__ import annotations

import sqlite3
import time
from bisect import bisect_left
from collections.abc import Mapping, Sequence
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Any, cast

import orjson
import zstandard

from jobcompd.identity import Position
from jobcompd.state import _codec
from jobcompd.state._database import Busy, Database
from jobcompd.state._errors import _rejected
from jobcompd.state._positions import _UPSERT_POSITION, _position_row
from jobcompd.state._schema import _SET, _bump
from jobcompd.state.values import (
    _JOBID,
    _PAYLOAD,
    _RID,
    _SOURCE,
    BatchResult,
    NewRecord,
    QuarantinedLine,
    RecordColumns,
    SpooledRecord,
    _Columns,
    spooled_records,
)

# A batch is made known, and (when some of it was known already) checked against the known ids,
# with one statement each, over its ids as rows (i, jobid, rid) that SQLite reads from two values
# (see _ids): its job ids as a JSON array (orjson writes it) and its record ids end to end, when
# they are all of one width (jobcompd's own are 32 hex digits) — else the JSON array of
# [rid, jobid] pairs, whose JSON SQLite reads again for each record (twice the time).
_IDS_OF_WIDTH = """
SELECT key AS i, value AS jobid, CAST(substr(:rids, key * :width + 1, :width) AS TEXT) AS rid
FROM json_each(:jobids)
"""
_IDS_AS_PAIRS = """
SELECT key AS i, json_extract(value, '$[1]') AS jobid, json_extract(value, '$[0]') AS rid
FROM json_each(:pairs)
"""

_ALREADY_KNOWN = """
SELECT i FROM ({ids}) AS n
WHERE EXISTS (SELECT 1 FROM known k WHERE k.jobid = n.jobid AND k.rid = n.rid)
"""

_INSERT_KNOWN = """
INSERT INTO known (jobid, rid, known_at)
SELECT jobid, rid, :at FROM ({ids}) WHERE true
ON CONFLICT (jobid, rid) DO NOTHING
"""

_IS_KNOWN = "SELECT 1 FROM known WHERE jobid = ? AND rid = ?"

# (_INSERT_KNOWN, _ALREADY_KNOWN) over each of the two.
_KNOWN_OF_WIDTH, _KNOWN_AS_PAIRS = (
    (_INSERT_KNOWN.format(ids=ids), _ALREADY_KNOWN.format(ids=ids)) for ids in (_IDS_OF_WIDTH, _IDS_AS_PAIRS)
)

UNSYNCED_REPORTS = 5000
"""Records settled without a flush to disk at most (the sender's default window): after a power
cut, at most these and the window are sent again."""

BATCH_RECORDS = 4096
"""Most records one spool row holds (a commit of more makes several rows)."""

_INSERT_QUARANTINE = """
INSERT INTO quarantine (source, line_no, byte_offset, raw, reason, at) VALUES (?, ?, ?, ?, ?, ?)
"""

_SEQ = itemgetter(0)  # of a delivery

_BATCH_OF = """
SELECT w.first_seq, w.settled, w.waiting FROM spool_waiting w
WHERE w.first_seq <= ?1 ORDER BY w.first_seq DESC LIMIT 1
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
        delivered: Sequence[int] | None = None,
    ) -> BatchResult:
        """Spool ``records``, keep ``quarantined`` lines and move the read ``position``: all or nothing.

        ``records`` are :class:`NewRecord` values, or columns of records all read from ``source``
        (their ``packed``, if they have one: their payloads packed beforehand by
        :func:`jobcompd.state.pack_payloads`).

        ``ambiguous`` counts the records read with a choice between readings; ``released`` are
        ids of quarantined lines these records were read from again (they leave the quarantine
        in the same transaction). A record whose
        ``rid`` is already spooled, dead-lettered or delivered (or repeated in this batch) is
        skipped and counted as ``already_known``.

        ``delivered``: the indexes of the records Kafka acknowledged already (produced before this
        commit): they are made known and counted delivered, and not spooled.
        """
        new = _columns(records, source)
        count = len(records) if not hasattr(records, "rids") else len(records.rids)
        packed = getattr(records, "packed", None)
        if not count and not quarantined and position is None and not released:
            return BatchResult(0, 0, 0)
        now = time.time()
        fresh: list[SpooledRecord] = []
        fresh_bytes = 0
        with self._transaction("commit a batch", records=count) as db:
            spooled = acked = 0
            if new.rids:
                try:
                    if not getattr(records, "typed", False):  # not vouched for by the compiled reader
                        _check_types(new)
                    (insert_known, already_known), ids = _ids(new.rids, new.jobids)
                except (TypeError, ValueError) as exc:  # not bytes, not an int, not a JSON value
                    raise _rejected(self.path, "commit a batch", exc) from exc
                ids["at"] = now
                # Usually every record is new: making them known says so (one statement, no
                # look-up first). When some were known already, that is undone and they are found.
                db.execute("SAVEPOINT new_ids")
                skip: set[int] = set()
                if db.execute(insert_known, ids).rowcount != len(new.rids):
                    db.execute("ROLLBACK TO new_ids")
                    skip = {k for (k,) in db.execute(already_known, ids)}
                    db.execute(insert_known, ids)
                db.execute("RELEASE new_ids")
                if delivered:
                    # Acknowledged by Kafka before this commit: known, counted delivered, not spooled.
                    if len(delivered) == count:
                        done: Sequence[int] = range(len(new.rids))
                    else:  # (by id: the repeats of an id in the batch are gone from ``new``)
                        every_id = _record_ids(records)
                        ids_acked = {every_id[i] for i in delivered}
                        done = [i for i, rid in enumerate(new.rids) if rid in ids_acked]
                    if skip:
                        done = [i for i in done if i not in skip]
                    acked = len(done)
                    if acked:
                        _bump(db, delivered_total=acked)
                        db.executemany(_SET, [("last_delivered_at", now),
                                              ("last_delivered_jobid", new.jobids[max(done)])])
                    skip = skip.union(done) if acked < len(new.rids) else set()
                    if acked == len(new.rids):
                        new = _Columns([], [], [], [])
                if skip:
                    keep = [i for i in range(len(new.rids)) if i not in skip]
                    new = _Columns(*([column[i] for i in keep] for column in new))  # type: ignore[arg-type]
                for at in range(0, len(new.rids), BATCH_RECORDS):
                    part = _Columns(*(column[at : at + BATCH_RECORDS] for column in new))  # type: ignore[arg-type]
                    first = _next_seqs(db, len(part.rids))
                    fresh_bytes += _insert_batch(db, first, *part, now, packed)
                    fresh += _spooled(part, first, now)
                    spooled += len(part.rids)
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
                spooled_total=spooled + acked,
                already_known_total=count - spooled - acked,
                quarantined_total=len(quarantined),
                ambiguous_total=ambiguous,
                quarantine_released_total=gone,
            )
        return BatchResult(spooled + acked, count - spooled - acked, len(quarantined), fresh, fresh_bytes)

    def known_among(self, rids: Sequence[str], jobids: Sequence[int]) -> set[int]:
        """The indexes of the records (``rids[i]`` of job ``jobids[i]``) whose ids are known already:
        spooled, dead-lettered or delivered. :meth:`commit_batch` skips the same ones, unless other
        ids are made known between the two calls."""
        if not rids:
            return set()
        if len(rids) == 1 and len(jobids) == 1:
            # A trickle's record, most often alone: looked up by its key, without the JSON the
            # statement of a batch reads its ids from (a third of the time).
            rid, jobid = rids[0], jobids[0]
            if type(rid) is not str or type(jobid) is not int or not -_I64 <= jobid < _I64:
                problem = TypeError(f"not a record id of a job: {rid!r}, {jobid!r}")
                raise _rejected(self.path, "look up record ids", problem)
            with self._reading("look up record ids") as db:
                return {0} if db.execute(_IS_KNOWN, (jobid, rid)).fetchone() else set()
        try:
            (_, already_known), ids = _ids(rids, jobids)
        except (TypeError, ValueError) as exc:
            raise _rejected(self.path, "look up record ids", exc) from exc
        with self._reading("look up record ids") as db:
            return {int(k) for (k,) in db.execute(already_known, ids)}

    def new_among(
        self, rids: list[str], jobids: list[int], payloads: list[bytes]
    ) -> tuple[list[str], list[int], list[bytes]]:
        """The records (``rids[i]`` of job ``jobids[i]``, payload ``payloads[i]``) whose ids are not
        known yet, as the same columns: those :meth:`commit_batch` would take as new
        (:meth:`known_among`'s others)."""
        known = self.known_among(rids, jobids)
        if not known:
            return rids, jobids, payloads
        fresh = [i for i in range(len(rids)) if i not in known]
        return [rids[i] for i in fresh], [jobids[i] for i in fresh], [payloads[i] for i in fresh]

    def pending(
        self, *, after_seq: int = 0, limit: int = 1000, whole_rows: bool = False
    ) -> list[SpooledRecord]:
        """Spooled records with ``seq`` greater than ``after_seq``, in seq order: up to ``limit``.

        ``whole_rows``: rows to their end (from ``after_seq`` on), until they hold ``limit`` records
        or more: fewer only at the spool's end. A row's payloads are one compressed frame,
        decompressed whole whenever any of them is read, so a reader that goes through the spool
        (the sender) asks for whole rows, and decompresses each once."""
        out: list[SpooledRecord] = []
        with self._reading("read the spool") as db:
            rows = db.execute(
                "SELECT s.first_seq, s.count, s.source, s.enqueued_at, s.records, s.codec, w.settled"
                " FROM spool s JOIN spool_waiting w USING (first_seq)"
                " WHERE s.first_seq + s.count - 1 > ?1 ORDER BY s.first_seq",
                (after_seq,),
            )
            for first, count, source, enqueued_at, columns, codec, settled in rows:
                rids, jobids, sizes, sources = orjson.loads(columns)
                total = sum(sizes)
                tried = dict(
                    (seq, (attempts, error))
                    for seq, attempts, error in db.execute(
                        "SELECT seq, attempts, last_error FROM spool_attempt WHERE seq BETWEEN ? AND ?",
                        (first, first + count - 1),
                    )
                )
                lo = max(0, after_seq + 1 - first)
                hi = count if whole_rows else min(count, lo + limit - len(out))
                if not tried and settled.count(0, lo, hi) == hi - lo:
                    # The usual case, records as they were spooled: built without a Python loop.
                    bounds = list(accumulate(sizes, initial=0))
                    payloads = _payload_bytes(db, first, codec, bounds[lo], bounds[hi], total)
                    if lo:
                        bounds = [b - bounds[lo] for b in bounds]
                    out += spooled_records(
                        range(first + lo, first + hi),
                        rids[lo:hi],
                        jobids[lo:hi],
                        map(payloads.__getitem__, map(slice, bounds[lo:hi], bounds[lo + 1 : hi + 1])),
                        repeat(source, hi - lo) if sources is None else sources[lo:hi],
                        repeat(enqueued_at, hi - lo),
                        repeat(0, hi - lo),
                        repeat(None, hi - lo),
                    )
                else:
                    payloads = _payload_bytes(db, first, codec, 0, total, total)
                    end = sum(sizes[:lo])
                    for i in range(lo, count):
                        begin, end = end, end + sizes[i]
                        seq = first + i
                        if settled[i]:
                            continue
                        attempts, error = tried.get(seq, (0, None))
                        out.append(
                            SpooledRecord(
                                seq, rids[i], jobids[i], payloads[begin:end],
                                source if sources is None else sources[i], enqueued_at, attempts, error,
                            )
                        )
                        if len(out) >= limit and not whole_rows:
                            break
                if len(out) >= limit:
                    break
        return out if whole_rows else out[:limit]

    def spool_depth(self) -> int:
        """How many records wait for a delivery report."""
        with self._reading("count the spool") as db:
            return int(db.execute("SELECT coalesce(sum(waiting), 0) FROM spool_waiting").fetchone()[0])

    def oldest_pending_at(self) -> float | None:
        """When the longest-waiting spooled record was first read, or None if the spool is empty."""
        with self._reading("read the spool") as db:
            value = db.execute("SELECT min(enqueued_at) FROM spool").fetchone()[0]
        return None if value is None else float(value)

    def mark_delivered(
        self, deliveries: Sequence[tuple[int, int | None]], *, wait: bool = True
    ) -> int | None:
        """Record successful delivery reports (:class:`Delivery` values, or plain ``(seq, jobid)``
        pairs: cheaper to make): the records leave the spool (their ids stay known).

        A report for a record that was dead-lettered meanwhile resolves the dead letter too (the
        record is in Kafka). Reports for unknown or already delivered records are ignored. Returns
        how many records were newly marked delivered; with ``wait=False``, ``None`` if another
        thread was using the state (nothing was done: call again).
        """
        if not deliveries:
            return 0
        now = time.time()
        seqs = sorted(map(_SEQ, deliveries))
        if seqs != list(range(seqs[0], seqs[0] + len(seqs))):  # (usually a run: no set needed)
            seqs = sorted(set(seqs))
        # A settlement lost to a power cut only sends its records again (the duplicates a crash
        # may cause; each carries its id): not worth a flush to disk per report batch. The next
        # flush of a commit of records carries it; once UNSYNCED_REPORTS have piled up unflushed
        # (draining a backlog while no line comes), the next settlement waits for a flush first,
        # which bounds what a power cut can repeat.
        if self._unflushed_reports >= UNSYNCED_REPORTS:
            self._flush()
        try:
            with self._transaction("record deliveries", synced=False, wait=wait) as db:
                removed = _delivered(db, deliveries, seqs, now)
        except Busy:
            return None
        self._settled(removed)
        return removed

    def record_attempt(self, seq: int, error: str | None) -> None:
        """Count a failed (retriable) send of spooled record ``seq``, remember the error; it stays."""
        self.record_attempts({seq: error})

    def record_attempts(self, errors: Mapping[int, str | None]) -> int:
        """`record_attempt` for many records in one transaction; returns how many were spooled."""
        if not errors:
            return 0
        with self._transaction("record send attempts") as db:
            spooled = [(seq, error) for seq, error in errors.items() if _waiting(db, seq) is not None]
            db.executemany(
                "INSERT INTO spool_attempt (seq, attempts, last_error) VALUES (?1, 1, ?2)"
                " ON CONFLICT (seq) DO UPDATE SET attempts = attempts + 1, last_error = ?2",
                spooled,
            )
            return len(spooled)


_I64 = 1 << 63


def _payload_bytes(
    db: sqlite3.Connection, first_seq: int, codec: int, start: int, end: int, total: int
) -> bytes:
    """Bytes ``start:end`` of the ``total`` bytes of payloads of spool row ``first_seq``, stored as
    ``codec`` says, read from its pages (the row's whole payload column is never loaded: memory
    stays at what is asked for). A row whose payloads cannot be read is a damaged database."""
    with db.blobopen("spool", "payloads", first_seq, readonly=True) as blob:
        try:
            return _codec.read(blob, codec, start, end, total)  # type: ignore[arg-type]
        except (zstandard.ZstdError, ValueError) as exc:
            raise sqlite3.DatabaseError(
                f"the payloads of spool row {first_seq} cannot be read: {exc}"
            ) from exc


def _ids(rids: Sequence[str], jobids: Sequence[int]) -> tuple[tuple[str, str], dict[str, Any]]:
    """The statements that make the records ``rids[i]`` of jobs ``jobids[i]`` known and that find
    the indexes of those known already (``_INSERT_KNOWN`` and ``_ALREADY_KNOWN``), and the
    parameters they take (``:at`` aside: when). Raises TypeError or ValueError for ids that are not
    text, job ids that are not 64-bit ints."""
    if len(rids) != len(jobids):
        raise ValueError(f"{len(rids)} record ids for {len(jobids)} job ids")
    width = len(rids[0]) if rids else 0
    ends = "".join(rids).encode()
    # Every id of the width, in as many bytes: ASCII, so character i * width of them starts id i.
    if len(ends) == width * len(rids) and set(map(len, rids)) <= {width}:
        return _KNOWN_OF_WIDTH, {"jobids": orjson.dumps(jobids), "rids": ends, "width": width}
    return _KNOWN_AS_PAIRS, {"pairs": orjson.dumps(list(zip(rids, jobids, strict=True)))}


def _record_ids(records: Sequence[NewRecord] | RecordColumns) -> Sequence[str]:
    """The record ids of ``records``, in their order (repeats included)."""
    if hasattr(records, "rids"):
        return cast(RecordColumns, records).rids
    return [r.rid for r in cast(Sequence[NewRecord], records)]


def _check_types(new: _Columns) -> None:
    """Refuse what the spool cannot hold: ids must be non-empty text, job ids integers, payloads
    bytes (checked a column at a time, without a Python loop per record; the columns are not empty)."""
    if set(map(type, new.rids)) != {str} or "" in new.rids:
        raise TypeError("a record id is not a non-empty str")
    if set(map(type, new.jobids)) != {int} or min(new.jobids) < -_I64 or max(new.jobids) >= _I64:
        raise TypeError("a job id is not a 64-bit int")
    if set(map(type, new.payloads)) != {bytes}:
        raise TypeError("a payload is not bytes")


def _next_seqs(db: sqlite3.Connection, count: int) -> int:
    """Hand out ``count`` consecutive seqs; the first of them."""
    last = int(db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0])
    db.execute(_SET, ("last_seq", last + count))
    return last + 1


def _insert_batch(
    db: sqlite3.Connection,
    first: int,
    rids: Sequence[str],
    jobids: Sequence[int],
    payloads: Sequence[bytes],
    sources: Sequence[str],
    enqueued_at: float,
    packed: bytes | None = None,
) -> int:
    """Spool records ``first``, ``first + 1``, ... as one row (and its ``spool_waiting`` row); the
    size of their payloads.

    ``packed`` may be the frame of a whole batch's payloads made beforehand (by the parse thread):
    it is stored when it holds as many bytes as ``payloads`` — when none of the batch was skipped
    as known and the batch makes one row — and made again here otherwise."""
    count = len(rids)
    sizes = list(map(len, payloads))
    total = sum(sizes)
    if packed is None or _codec.packed_size(packed) != total:
        packed = _codec.pack(payloads)
    common = sources[0] if sources and sources.count(sources[0]) == count else None
    columns = orjson.dumps(
        [list(rids), list(jobids), sizes, None if common is not None else list(sources)]
    )
    db.execute(
        "INSERT INTO spool (first_seq, count, source, enqueued_at, records, payloads, codec)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (first, count, common or "", enqueued_at, columns, packed, _codec.ZSTD),
    )
    db.execute("INSERT INTO spool_waiting (first_seq, settled, waiting) VALUES (?, zeroblob(?), ?)",
               (first, count, count))
    return total


def _append(
    db: sqlite3.Connection, records: Sequence[SpooledRecord], enqueued_at: float
) -> int:
    """Spool ``records`` (their seqs are new ones) as one batch, with their attempts; the first seq."""
    first = _next_seqs(db, len(records))
    _insert_batch(
        db, first, [r.rid for r in records], [r.jobid for r in records], [r.payload for r in records],
        [r.source for r in records], enqueued_at,
    )
    db.executemany(
        "INSERT INTO spool_attempt (seq, attempts, last_error) VALUES (?, ?, ?)",
        [(first + i, r.attempts, r.last_error) for i, r in enumerate(records) if r.attempts or r.last_error],
    )
    return first


def _waiting(db: sqlite3.Connection, seq: int) -> tuple[int, bytes] | None:
    """(first seq, settled flags) of the batch where record ``seq`` waits, or None if it does not."""
    row = db.execute(_BATCH_OF, (seq,)).fetchone()
    if row is None or seq >= row[0] + len(row[1]) or row[1][seq - row[0]]:
        return None
    return row[0], row[1]


def _settle(db: sqlite3.Connection, seqs: Sequence[int]) -> tuple[int, list[int]]:
    """Take sorted, distinct ``seqs`` out of the spool: how many were waiting, and the seqs that
    were not (already settled, or never spooled)."""
    settled_now = 0
    elsewhere: list[int] = []
    at, count = 0, len(seqs)
    while at < count:
        seq = seqs[at]
        row = db.execute(_BATCH_OF, (seq,)).fetchone()
        if row is None or seq >= row[0] + len(row[1]):
            elsewhere.append(seq)
            at += 1
            continue
        first, flags, waiting = row[0], bytearray(row[1]), row[2]
        upto = bisect_left(seqs, first + len(flags), at)  # seqs[at:upto] are this batch's
        start, stop = seq - first, seqs[upto - 1] - first + 1
        if stop - start == upto - at and flags.count(0, start, stop) == stop - start:
            # A run of records, none settled before (a partition's reports, the usual case): at once.
            flags[start:stop] = b"\x01" * (stop - start)
            waiting -= stop - start
            settled_now += stop - start
        else:
            for one in seqs[at:upto]:
                if flags[one - first]:
                    elsewhere.append(one)
                    continue
                flags[one - first] = 1
                waiting -= 1
                settled_now += 1
        if waiting:
            db.execute(
                "UPDATE spool_waiting SET settled = ?, waiting = ? WHERE first_seq = ?",
                (bytes(flags), waiting, first),
            )
        else:  # the whole batch is settled: its payloads go
            db.execute("DELETE FROM spool WHERE first_seq = ?", (first,))
            db.execute("DELETE FROM spool_waiting WHERE first_seq = ?", (first,))
            db.execute("DELETE FROM spool_attempt WHERE seq BETWEEN ? AND ?", (first, first + len(flags) - 1))
        at = upto
    return settled_now, elsewhere


# A spool row as read: source, read time, rids, job ids, sources (or None), payloads, payload bounds.
_Batch = tuple[str, float, list[str], list[int], "list[str] | None", bytes, list[int]]


def _spooled_record(
    db: sqlite3.Connection, seq: int, batches: dict[int, _Batch] | None = None
) -> SpooledRecord | None:
    """Spooled record ``seq`` while it waits, else None. ``batches`` keeps the batches read (by
    their first seq) for the next calls, so many records of one batch read it once."""
    batch = _waiting(db, seq)
    if batch is None:
        return None
    first = batch[0]
    found = None if batches is None else batches.get(first)
    if found is None:
        source, enqueued_at, columns, codec = db.execute(
            "SELECT source, enqueued_at, records, codec FROM spool WHERE first_seq = ?", (first,)
        ).fetchone()
        rids, jobids, sizes, sources = orjson.loads(columns)
        payloads = _payload_bytes(db, first, codec, 0, sum(sizes), sum(sizes))
        found = (source, enqueued_at, rids, jobids, sources, payloads, list(accumulate(sizes, initial=0)))
        if batches is not None:
            batches[first] = found
    source, enqueued_at, rids, jobids, sources, payloads, bounds = cast(_Batch, found)
    i = seq - first
    tried = db.execute("SELECT attempts, last_error FROM spool_attempt WHERE seq = ?", (seq,)).fetchone()
    attempts, error = tried if tried is not None else (0, None)
    return SpooledRecord(
        seq, rids[i], jobids[i], payloads[bounds[i] : bounds[i + 1]],
        source if sources is None else sources[i], enqueued_at, attempts, error,
    )


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


def _spooled(new: _Columns, first: int, now: float) -> list[SpooledRecord]:
    n = len(new.rids)
    return spooled_records(
        range(first, first + n), new.rids, new.jobids, new.payloads, new.sources,
        repeat(now, n), repeat(0, n), repeat(None, n),
    )


def _delivered(
    db: sqlite3.Connection, deliveries: Sequence[tuple[int, int | None]], seqs: Sequence[int], now: float
) -> int:
    """:meth:`Spool.mark_delivered`'s transaction, for ``seqs``, the sorted, distinct seqs of
    ``deliveries``: how many records were newly marked delivered."""
    last_jobid = _last_jobid(db, deliveries)
    if last_jobid is None:
        return 0
    removed, elsewhere = _settle(db, seqs)
    if elsewhere and db.execute("SELECT EXISTS (SELECT 1 FROM deadletter)").fetchone()[0]:
        gone = [(seq,) for seq in elsewhere]
        removed += db.executemany("DELETE FROM deadletter WHERE seq = ?", gone).rowcount
    _bump(db, delivered_total=removed)
    db.executemany(_SET, [("last_delivered_at", now), ("last_delivered_jobid", last_jobid)])
    return removed


def _last_jobid(db: sqlite3.Connection, deliveries: Sequence[tuple[int, int | None]]) -> int | None:
    """The job id of the last of ``deliveries`` still waiting in the spool or dead-lettered."""
    for seq, jobid in reversed(deliveries):
        if jobid is not None:
            if _waiting(db, seq) is not None or db.execute(
                "SELECT 1 FROM deadletter WHERE seq = ?", (seq,)
            ).fetchone():
                return jobid
            continue
        row = db.execute(
            "SELECT json_extract(s.records, '$[1][' || (?1 - s.first_seq) || ']')"
            " FROM spool s JOIN spool_waiting w USING (first_seq)"
            " WHERE s.first_seq = (SELECT max(first_seq) FROM spool WHERE first_seq <= ?1)"
            " AND ?1 < s.first_seq + s.count AND substr(w.settled, ?1 - s.first_seq + 1, 1) = x'00'"
            " UNION ALL SELECT jobid FROM deadletter WHERE seq = ?1",
            (seq,),
        ).fetchone()
        if row is not None:
            return int(row[0])
    return None
