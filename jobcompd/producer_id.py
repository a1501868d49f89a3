"""A new idempotent producer's first records sent at once, not half a second later.

An idempotent producer sends nothing before a broker has given it a producer id. librdkafka asks
for one when a metadata answer comes, if a broker is up by then; if none is, it asks again half a
second later (``rd_kafka_idemp_pid_timer_restart``, 500 ms), and each such answer starts that
half second again. The partitions' look-up of ``kafka.partitioning = "sticky"``
(:mod:`jobcompd.partitions`) is answered before a broker that librdkafka asks for the id is up:
every start waited the half second (a replay's first records; the first delivery of a daemon
restarted with a backlog, 0.75 s after its start instead of 0.3). :func:`hasten_producer_id` asks
for the topic's metadata on a thread of its own, every ``_EVERY_S`` over that half second and
every ``_LATER_S`` after it, until the producer has delivered a record (or is let go), for
``_UNTIL_S`` at most: the id is asked for as soon as a broker is up (the first records' produce
connects their leaders), a broker slow to come up (TLS, SASL, a distant cluster) included.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaException

from jobcompd.threads import NamedThread

__all__ = ["hasten_producer_id"]

_FIRST_S = 0.5  # librdkafka's own wait
_EVERY_S = 0.02  # within it
_LATER_S = 0.25  # after it: each answer before a broker is up restarts librdkafka's wait
_UNTIL_S = 5.0


def hasten_producer_id(producer: Any, topic: str, done: Callable[[], bool]) -> threading.Thread:
    """Have ``producer`` (just made) ask for its producer id as soon as a broker is up: metadata
    of ``topic`` asked for until ``done()`` (it delivered a record, or was let go), on a thread
    (returned, started)."""
    thread = NamedThread(
        target=_ask, args=(producer, topic, done, time.monotonic()),
        name="jobcompd-producer-id", daemon=True,
    )
    thread.start()
    return thread


def _ask(producer: Any, topic: str, done: Callable[[], bool], made: float) -> None:
    while not done() and (left := made + _UNTIL_S - time.monotonic()) > 0:
        try:
            producer.list_topics(topic, timeout=min(left, _LATER_S))
        except (KafkaException, RuntimeError):  # no broker yet, or closed
            pass
        time.sleep(_EVERY_S if time.monotonic() - made < _FIRST_S else _LATER_S)
