"""The send side's work per record: the loop that hands records to ``produce()`` and enters each
one in flight, the delivery reports as they are served, and the reports that all say delivered
made into what the state settles.

The Python functions and class here are the reference; ``jobcompd/_sendloop.c`` is their compiled
twin, which does the same step for step without the interpreter's work per record (some 7 % of
``replay``'s and ``run``'s throughput for the loop alone). The names without ``python_`` are the ones
in use: the compiled ones where they were built, unless ``JOBCOMPD_PARSER=python`` asks for the
Python path (as it does for the record reader, :mod:`jobcompd.fastpath`). :data:`SEND_LOOP` says
which. ``tests/test_sendloop.py`` runs both twins on the same inputs.

Where the compiled send loop is built, records also go to librdkafka without confluent-kafka's
``produce()``, and their reports come back without its ``Message`` objects: a :func:`channel` made
for each producer (the compiled ``Channel``, a librdkafka plugin: see ``_sendloop.c``). It hands
records to librdkafka without the interpreter lock, and it keeps how each ended, for
:meth:`Channel.take` to hand over as the reports collected here would be. confluent-kafka's
``produce()`` and report callback remain the way wherever the channel is not in use (the Python
path, a producer made without it, ``debug_jobcomp``), and for the records sent early.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Set
from operator import itemgetter
from typing import Any, NamedTuple, cast

from confluent_kafka import KafkaError, KafkaException

from jobcompd.fastpath import load_compiled

__all__ = [
    "CHANNEL_PROPERTY",
    "SEND_LOOP",
    "PythonReports",
    "Reports",
    "Undelivered",
    "channel",
    "delivered_pairs",
    "failures",
    "forget",
    "produce_columns",
    "produce_records",
    "python_delivered_pairs",
    "python_forget",
    "python_produce_records",
    "refusal_error",
]

_SEQ, _JOBID, _SIZE = map(itemgetter, range(3))  # of an in-flight entry

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


def produce_columns(
    produce: Callable[..., Any],
    topic: str,
    partition: int,
    rids: list[str],
    payloads: list[bytes],
    start: int,
    header: str,
) -> tuple[int, int, BaseException | None]:
    """Hand records ``rids[i]``, ``payloads[i]`` from ``start`` on to ``produce``, in order, as
    :func:`python_produce_records` does, entering none in flight (a batch not spooled yet). Returns
    the records handed over, their payload bytes, and the exception that stopped the loop."""
    sent = size = 0
    for rid, payload in zip(rids[start:], payloads[start:], strict=True):
        try:
            produce(topic, payload, rid, partition, None, None, 0, [(header, rid)])
        except BaseException as exc:  # handed to the caller, which raises what it does not expect
            return sent, size, exc
        size += len(payload)
        sent += 1
    return sent, size, None


class PythonReports:
    """Delivery reports as confluent-kafka serves them: an instance is the ``on_delivery`` callback.

    ``delivered`` holds the key of each report that says delivered (all it takes to settle it),
    ``failed`` each other report as ``(error, message)``, ``since`` the ``time.monotonic()`` of the
    first report of the two lists; the caller replaces the lists (with lists) as it settles them.
    """

    __slots__ = ("delivered", "failed", "since")

    def __init__(self) -> None:
        self.delivered: list[Any] = []
        self.failed: list[tuple[Any, Any]] = []
        self.since = 0.0

    def __call__(self, error: Any, message: Any) -> None:
        if not self.delivered and not self.failed:
            self.since = time.monotonic()
        if error is None:
            # Of a record delivered only its key is kept, so its message (and the copy of the
            # payload it carries) is freed at once, not with a batch of them.
            self.delivered.append(message.key())
        else:
            self.failed.append((error, message))


def python_delivered_pairs(
    keys: list[Any], in_flight: dict[str, Any], early: Set[str]
) -> tuple[list[tuple[int, int]], list[str]] | None:
    """For reports that all say delivered (their ``keys``), of records all in flight and none of
    them sent early (in ``early``, waiting for their batch's commit): the ``(seq, jobid)`` of each,
    as the state settles them, and their record ids; ``None`` when that is not the case (a key that
    is not bytes, a record not in flight, one sent early). Nothing is changed."""
    try:
        rids = list(map(bytes.decode, keys))
    except TypeError:  # a report without a key: not one of ours
        return None
    if early and not early.isdisjoint(rids):
        return None
    got = list(map(in_flight.get, rids))
    if None in got:
        return None
    found = cast(list[tuple[int, int, int]], got)
    return list(zip(map(_SEQ, found), map(_JOBID, found), strict=True)), rids


def python_forget(in_flight: dict[str, Any], rids: list[str]) -> int:
    """Take the records ``rids`` out of flight; the bytes of their payloads."""
    return sum(map(_SIZE, map(in_flight.pop, rids)))


class Undelivered(NamedTuple):
    """The report of a record produced through a channel that was not delivered, answering as
    confluent-kafka's ``Message`` does where a failure is settled."""

    rid: bytes
    payload: bytes
    partition_: int
    offset_: int

    def key(self) -> bytes:
        return self.rid

    def value(self) -> bytes:
        return self.payload

    def partition(self) -> int:
        return self.partition_

    def offset(self) -> int:
        return self.offset_


def failures(taken: list[tuple[int, bytes, bytes, int, int]]) -> list[tuple[KafkaError, Undelivered]]:
    """The failures :meth:`Channel.take` returned, as the reports collected here hold them:
    ``(error, message)``."""
    return [(KafkaError(code), Undelivered(key, payload, partition, offset))
            for code, key, payload, partition, offset in taken]


def refusal_error(refusal: tuple[int, int, str]) -> BaseException:
    """A record librdkafka refused through a channel, ``(code, fatal, reason)``, as confluent-kafka's
    ``produce()`` raises it: ``BufferError`` for a full queue, else ``KafkaException``."""
    code, fatal, reason = refusal
    if code == KafkaError._QUEUE_FULL:
        return BufferError(reason)
    return KafkaException(KafkaError(code, reason, fatal=bool(fatal)))


CHANNEL_PROPERTY = "jobcompd.channel"
"""The producer property, handled by the channel's plugin, that names the channel."""

_compiled, SEND_LOOP = load_compiled("_sendloop", "send loop")


def channel() -> tuple[Any, dict[str, str]]:
    """A new channel and the producer properties that make a producer use it (to go before any
    other), or ``None`` and no properties where the compiled send loop is not in use or has not
    found the librdkafka confluent-kafka loaded."""
    if _compiled is None or _compiled.librdkafka():
        return None, {}
    made = _compiled.Channel()
    return made, {"plugin.library.paths": _compiled.__file__, CHANNEL_PROPERTY: str(made.id)}


produce_records: ProduceRecords = python_produce_records if _compiled is None else _compiled.produce_records
Reports: Callable[[], PythonReports] = PythonReports if _compiled is None else _compiled.Reports
delivered_pairs: Callable[
    [list[Any], dict[str, Any], Set[str]], tuple[list[tuple[int, int]], list[str]] | None
] = python_delivered_pairs if _compiled is None else _compiled.delivered_pairs
forget: Callable[[dict[str, Any], list[str]], int] = python_forget if _compiled is None else _compiled.forget
