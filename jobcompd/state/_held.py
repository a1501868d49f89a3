"""What an operator sees and acts on: dead letters, quarantined lines, the known record ids."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence

from jobcompd.state._database import Database
from jobcompd.state._schema import _bump
from jobcompd.state._spool import _append, _Batch, _settle, _spooled_record
from jobcompd.state.values import DeadLetter, QuarantinedLine, SpooledRecord

_DEADLETTER_COLUMNS = "seq, rid, jobid, payload, source, reason, failed_at, attempts"

_INSERT_DEADLETTER = """
INSERT INTO deadletter
    (seq, rid, jobid, payload, source, enqueued_at, attempts, last_error, reason, failed_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
"""


class HeldRecords(Database):
    """Dead letters, quarantined lines and the known ids: list, retry, purge, prune."""

    def dead_letter(self, seq: int, reason: str) -> bool:
        """Move spooled record ``seq`` to the dead letters with ``reason``; False if not spooled."""
        return self.dead_letter_many({seq: reason}) == 1

    def dead_letter_many(self, reasons: Mapping[int, str]) -> int:
        """`dead_letter` for many records in one transaction; returns how many were moved."""
        if not reasons:
            return 0
        now = time.time()
        with self._transaction("dead-letter records") as db:
            batches: dict[int, _Batch] = {}
            records = [r for seq in sorted(reasons) if (r := _spooled_record(db, seq, batches))]
            db.executemany(
                _INSERT_DEADLETTER, [(*r, reasons[r.seq], now) for r in records]
            )
            moved, _ = _settle(db, [r.seq for r in records])
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
            for seq, _ in found:  # each back as a batch of its own: it keeps its own read time
                row = db.execute(
                    "SELECT seq, rid, jobid, payload, source, enqueued_at, attempts, reason"
                    " FROM deadletter WHERE seq = ?",
                    (seq,),
                ).fetchone()
                _append(db, [SpooledRecord(*row)], row[5])
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
