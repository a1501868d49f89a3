"""Read a whole topic back from a broker, for asserting on what really arrived."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

__all__ = ["consume_all", "topic_partitions"]


def topic_partitions(consumer: Consumer, topic: str, *, timeout: float) -> list[int]:
    """Return the partition ids of ``topic``, retrying metadata until it has some or ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            metadata = consumer.list_topics(topic, timeout=max(0.1, min(remaining, 2.0)))
        except KafkaException:
            metadata = None
        if metadata is not None:
            tmeta = metadata.topics.get(topic)
            if tmeta is not None and tmeta.error is None and tmeta.partitions:
                return sorted(tmeta.partitions)
        if remaining <= 0:
            raise TimeoutError(f"topic {topic!r} has no partitions in metadata after {timeout}s")
        time.sleep(0.1)


def consume_all(
    bootstrap: str,
    topic: str,
    *,
    expected: int,
    timeout: float = 30.0,
    config: dict[str, Any] | None = None,
) -> list[Message]:
    """Read every partition of ``topic`` from the beginning and return the messages.

    Partitions are assigned explicitly (``assign()``, no consumer group), which works on every
    broker kind. Reading stops once ``expected`` messages have arrived *and* every partition has
    been read up to the high watermark it had at that moment, so extra messages (duplicates)
    already written show up in the result instead of being cut off. If ``timeout`` seconds pass
    first, whatever arrived so far is returned (nothing if the topic never showed up in
    metadata): assert on its length.

    Messages come back in arrival order, which preserves order within each partition only.
    Per-message errors other than partition EOF are raised as :class:`KafkaException`.
    """
    conf: dict[str, Any] = {
        "bootstrap.servers": bootstrap,
        # assign() needs no group, but librdkafka's consumer wants an id; commits stay off.
        "group.id": f"readback-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
        "topic.metadata.refresh.interval.ms": 1000,
    }
    conf.update(config or {})
    deadline = time.monotonic() + timeout
    consumer = Consumer(conf)
    try:
        try:
            partitions = topic_partitions(
                consumer, topic, timeout=max(0.0, deadline - time.monotonic())
            )
        except TimeoutError:
            return []
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        messages: list[Message] = []
        next_offset: dict[int, int] = {}
        targets: dict[int, int] | None = None
        while time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise KafkaException(err)
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None  # set on consumed messages
                messages.append(msg)
                next_offset[partition] = offset + 1
            if len(messages) < expected:
                continue
            if targets is None:
                targets = _high_watermarks(consumer, topic, partitions, deadline)
                if targets is None:
                    break
            if _caught_up(consumer, topic, targets, next_offset):
                break
        return messages
    finally:
        consumer.close()


def _caught_up(
    consumer: Consumer, topic: str, targets: dict[int, int], next_offset: dict[int, int]
) -> bool:
    """True when every partition has been read up to its target offset."""
    lagging = [p for p, hw in targets.items() if next_offset.get(p, 0) < hw]
    if not lagging:
        return True
    # The position also moves past records the application never sees (transaction markers).
    positions = consumer.position([TopicPartition(topic, p) for p in lagging])
    return all(tp.offset >= targets[tp.partition] for tp in positions)


def _high_watermarks(
    consumer: Consumer, topic: str, partitions: list[int], deadline: float
) -> dict[int, int] | None:
    """High watermark of each partition, or None if the broker would not say before ``deadline``."""
    marks: dict[int, int] = {}
    for p in partitions:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        try:
            _low, high = consumer.get_watermark_offsets(
                TopicPartition(topic, p), timeout=min(remaining, 5.0), cached=False
            )
        except KafkaException:
            return None
        marks[p] = high
    return marks
