"""A new idempotent producer's first records sent at once, not half a second later.

An idempotent producer sends nothing before a broker has given it a producer id. librdkafka asks
for one when a metadata answer comes, if a broker is up by then; if none is, it asks again half a
second later (``rd_kafka_idemp_pid_timer_restart``, 500 ms), and each such answer starts that
half second again. The partitions' look-up of ``kafka.partitioning = "sticky"``
(:mod:`jobcompd.partitions`) is answered before a broker that librdkafka asks for the id is up:
every start waited the half second (a replay's first records; the first delivery of a daemon
restarted with a backlog, 0.75 s after its start instead of 0.3). :func:`hasten_producer_id` asks
for the topic's metadata every ``_EVERY_S`` over that half second, on a thread of its own, so that
the id is asked for as soon as a broker is up (the first records' produce connects their leaders).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from typing import Any

from confluent_kafka import KafkaException

__all__ = ["hasten_producer_id", "idempotent"]

_WINDOW_S = 0.5  # librdkafka's own wait: past it, its timer and its own metadata answers serve
_EVERY_S = 0.02


def idempotent(properties: Mapping[str, Any]) -> bool:
    """Whether a producer made with ``properties`` is idempotent (it waits for a producer id)."""
    return str(properties.get("enable.idempotence", "false")).strip().lower() in ("true", "t", "1")


def hasten_producer_id(producer: Any, topic: str) -> threading.Thread:
    """Have ``producer`` (just made) ask for its producer id as soon as a broker is up: metadata
    of ``topic`` asked for every ``_EVERY_S`` for ``_WINDOW_S``, on a thread (returned, started)."""
    thread = threading.Thread(
        target=_ask, args=(producer, topic, time.monotonic() + _WINDOW_S),
        name="jobcompd-producer-id", daemon=True,
    )
    thread.start()
    return thread


def _ask(producer: Any, topic: str, until: float) -> None:
    while (left := until - time.monotonic()) > 0:
        try:
            producer.list_topics(topic, timeout=left)
        except (KafkaException, RuntimeError):  # no broker yet (the timer serves), or closed
            pass
        time.sleep(min(_EVERY_S, max(0.0, until - time.monotonic())))
