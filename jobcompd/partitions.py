"""Which partition a record goes to: ``kafka.partitioning``.

``"sticky"`` (the default): records go to one partition for ``sticky.partitioning.linger.ms`` (by
default twice ``linger.ms``), then to another chosen at random among those with a leader — what
librdkafka does for records without a key, as the plugin's are. They keep their key; fewer, fuller
batches wait less and cost librdkafka and the brokers less work a record. A record sent again may
land in another partition.

``"key"``: librdkafka's partitioner places each record by its key, the record id, so a record sent
again after a crash lands in the partition that holds it already (a compacted topic keeps one
copy). At a few records a second each one then waits the whole ``linger.ms`` in a batch of its own
partition.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from jobcompd.config import KafkaSettings
from jobcompd.threads import NamedThread

__all__ = ["UNASSIGNED", "Partitions"]

UNASSIGNED = -1  # librdkafka's partitioner chooses (by key)
_LOOKUP_TIMEOUT_S = 10.0
_REFRESH_S = 300.0  # partitions looked up again this often: a topic can gain partitions
_RETRY_S = 5.0  # after a look-up that found none
_LINGER_MS = 5.0  # librdkafka's default linger.ms


def _sticky_s(kafka: KafkaSettings) -> float:
    """How long records stay on one partition: librdkafka's ``sticky.partitioning.linger.ms``."""
    props = kafka.properties
    try:
        if "sticky.partitioning.linger.ms" in props:
            return float(props["sticky.partitioning.linger.ms"]) / 1000.0
        linger = props.get("linger.ms", props.get("queue.buffering.max.ms", _LINGER_MS))
        return 2 * float(linger) / 1000.0
    except ValueError:  # librdkafka accepted it, so this does not happen
        return 2 * _LINGER_MS / 1000.0


class Partitions:
    """The partition of the next records produced, by ``kafka.partitioning``.

    With ``"sticky"``, :meth:`look_up` has the topic's partitions looked up now and then, on a
    thread of its own (the sender's never waits for a broker); :meth:`next` never waits. Until
    they are known, and with ``"key"``, it answers :data:`UNASSIGNED`.
    """

    def __init__(self, log: Any) -> None:
        self._log = log
        self._available: list[int] = []  # replaced whole by the look-up's thread
        self._current = UNASSIGNED
        self._until = 0.0
        self._looked_at = -_REFRESH_S
        self._looking: threading.Thread | None = None

    @property
    def known(self) -> int:
        """How many partitions with a leader the last look-up found (0: none, or none yet)."""
        return len(self._available)

    def look_up(self, producer: Any, kafka: KafkaSettings) -> None:
        """Have the topic's partitions looked up, if ``"sticky"`` and due, and not under way."""
        if kafka.partitioning != "sticky" or (self._looking is not None and self._looking.is_alive()):
            return
        now = time.monotonic()
        if now - self._looked_at < (_REFRESH_S if self._available else _RETRY_S):
            return
        self._looked_at = now
        self._looking = NamedThread(
            target=self._look_up, args=(producer, kafka.topic), name="jobcompd-partitions", daemon=True
        )
        self._looking.start()

    def _look_up(self, producer: Any, topic_name: str) -> None:
        try:
            topic = producer.list_topics(topic_name, timeout=_LOOKUP_TIMEOUT_S).topics.get(topic_name)
        except KafkaException:
            return  # brokers unreachable: by key meanwhile (or the partitions known before)
        if topic is None or topic.error is not None:
            return
        available = sorted(p.id for p in topic.partitions.values() if p.leader >= 0)
        if available != self._available:
            self._log.info("sticky partitioning: partitions looked up", topic=topic_name,
                           partitions=len(topic.partitions), with_leader=len(available))
        self._available = available

    def gone(self, error: KafkaError, kafka: KafkaSettings) -> bool:
        """Whether ``error`` (at produce, or in a delivery report) says a partition chosen here is
        gone — the topic made again, smaller. The record is not at fault: it goes by its key, and
        the partitions are looked up again."""
        if error.code() != KafkaError._UNKNOWN_PARTITION or kafka.partitioning != "sticky":
            return False
        self.forget()
        return True

    def forget(self) -> None:
        """The partitions known are stale, or the topic changed: by key until the next look-up,
        which is due at once."""
        self._available = []
        self._current = UNASSIGNED
        self._looked_at = -_REFRESH_S

    def next(self, kafka: KafkaSettings) -> int:
        """The partition for records produced now (:data:`UNASSIGNED`: by their key)."""
        available = self._available
        if kafka.partitioning != "sticky" or not available:
            return UNASSIGNED
        now = time.monotonic()
        if now >= self._until or self._current not in available:
            self._current = random.choice(available)
            self._until = now + _sticky_s(kafka)
        return self._current
