"""The loop of every record sent: records from the end of a backlog to ``produce()``, each one
entered in flight.

:func:`python_produce_records` is the reference; ``jobcompd/_sendloop.c`` is its compiled twin,
which does the same step for step without the interpreter's work per record around each
``produce()`` call (some 7 % of ``replay``'s and ``run``'s throughput). :data:`produce_records` is the
one in use: the compiled one where it was built, unless ``JOBCOMPD_PARSER=python`` asks for the
Python path (as it does for the record reader, :mod:`jobcompd.fastpath`). ``tests/test_sendloop.py``
runs both on the same backlogs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from jobcompd.fastpath import python_forced

__all__ = ["SEND_LOOP", "produce_records", "python_produce_records"]

ProduceRecords = Callable[
    [Callable[..., Any], str, int, list[Any], int, int, dict[str, Any], str],
    tuple[int, int, BaseException | None],
]


def python_produce_records(
    produce: Callable[..., Any],
    topic: str,
    partition: int,
    backlog: list[Any],
    end: int,
    budget: int,
    in_flight: dict[str, Any],
    header: str,
) -> tuple[int, int, BaseException | None]:
    """Hand records (:class:`~jobcompd.state.SpooledRecord`) from the end of ``backlog`` to
    ``produce`` until ``end`` are left or ``budget`` bytes of payloads are handed over: each as
    ``produce(topic, payload, rid, partition, None, None, 0, [(header, rid)])`` (positionally:
    keywords cost confluent-kafka more than the call's own work), then entered in ``in_flight`` as
    ``rid → (seq, jobid, payload size)`` and popped.

    Returns the records handed over, their payload bytes, and the exception that stopped the loop
    (``None`` if none): it is returned, not raised — the record it concerns is left at the end of
    the backlog, and the caller decides (backpressure, a refused record, a bug to raise).
    """
    sent = size = 0
    while len(backlog) > end and size < budget:
        record = backlog[-1]
        try:
            rid, payload = record.rid, record.payload
            produce(topic, payload, rid, partition, None, None, 0, [(header, rid)])
            in_flight[rid] = (record.seq, record.jobid, len(payload))
        except BaseException as exc:  # handed to the caller, which raises what it does not expect
            return sent, size, exc
        size += len(payload)
        sent += 1
        backlog.pop()
    return sent, size, None


def _load() -> tuple[ProduceRecords, str]:
    if python_forced():
        return python_produce_records, "python (JOBCOMPD_PARSER=python)"
    try:
        return importlib.import_module("jobcompd._sendloop").produce_records, "compiled"
    except ImportError:
        return python_produce_records, "python (the compiled send loop is not built)"


produce_records, SEND_LOOP = _load()
