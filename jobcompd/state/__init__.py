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

from jobcompd.identity import Position
from jobcompd.state._codec import pack as pack_payloads
from jobcompd.state._errors import StateError
from jobcompd.state._held import HeldRecords
from jobcompd.state._positions import Positions
from jobcompd.state._schema import COUNTERS, DB_NAME, SCHEMA_VERSION
from jobcompd.state._spool import BATCH_RECORDS, Spool
from jobcompd.state.values import (
    BatchResult,
    DeadLetter,
    Delivery,
    NewRecord,
    QuarantinedLine,
    RecordColumns,
    SpooledRecord,
    Stats,
)

__all__ = [
    "BATCH_RECORDS",
    "COUNTERS",
    "DB_NAME",
    "SCHEMA_VERSION",
    "BatchResult",
    "DeadLetter",
    "Delivery",
    "NewRecord",
    "Position",
    "QuarantinedLine",
    "RecordColumns",
    "SpooledRecord",
    "State",
    "StateError",
    "Stats",
    "pack_payloads",
]


class State(Spool, HeldRecords, Positions):
    """The crash-safe store behind jobcompd; one per state directory, shared by its threads.

    Build it with `State.open`. Every method is thread-safe, and every method that changes
    something is one transaction: it happens completely or not at all. Its rooms: the database
    (:mod:`._database`), the spool (:mod:`._spool`), dead letters, quarantine and known ids
    (:mod:`._held`), read positions (:mod:`._positions`).
    """
