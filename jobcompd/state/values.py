"""The values the state takes and gives: records, dead letters, quarantined lines, results."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any, NamedTuple, Protocol


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


def spooled_records(*columns: Iterable[Any]) -> list[SpooledRecord]:
    """:class:`SpooledRecord` values from columns in the order of its fields, built without a
    Python call per record (a NamedTuple's ``__new__`` is Python code)."""
    return list(map(tuple.__new__, repeat(SpooledRecord), zip(*columns, strict=True)))


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
    """A successful delivery report: the spooled record ``seq`` is in Kafka.

    ``jobid``, when the sender knows it, spares the state reading it from the spooled batch.
    """

    seq: int
    jobid: int | None = None


@dataclass(frozen=True, slots=True)


class BatchResult:
    """What `State.commit_batch` did: new records (spooled, or committed as delivered already),
    records it already held, lines quarantined.

    ``fresh`` holds the spooled records as `State.pending` would return them, so a sender can take
    them from memory. ``fresh_bytes`` is the size of their payloads.
    """

    spooled: int
    already_known: int
    quarantined: int
    fresh: Sequence[SpooledRecord] = field(default=(), compare=False, repr=False)
    fresh_bytes: int = field(default=0, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Stats:
    """What the state holds and has done: depths now, totals since it was created, the file size.

    The ``*_total`` counters only grow; ``known_ids`` is the number of record ids kept (spooled
    ever, minus those the retention forgot).
    """

    path: str
    spool_depth: int
    oldest_pending_at: float | None
    deadletter_count: int
    quarantine_count: int
    last_delivered_at: float | None
    last_delivered_jobid: int | None
    created_at: float | None
    opened_at: float | None
    db_bytes: int
    spooled_total: int = 0
    already_known_total: int = 0
    delivered_total: int = 0
    deadlettered_total: int = 0
    retried_total: int = 0
    purged_total: int = 0
    quarantined_total: int = 0
    pruned_total: int = 0
    ambiguous_total: int = 0
    quarantine_purged_total: int = 0
    quarantine_released_total: int = 0

    @property
    def known_ids(self) -> int:
        """Record ids kept to recognise a line read again."""
        return max(0, self.spooled_total - self.pruned_total)
