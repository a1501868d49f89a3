"""A producer alone at a steady rate (``make bench``'s latency floor): librdkafka through
confluent-kafka, as jobcompd configures it, sending records read from a file.

    python -m bench.steady_producer BOOTSTRAP TOPIC MODE PER_S RECORDS WARMUP PARTITIONS

``MODE`` is ``keyed``, ``sticky`` or ``keyless``. ``RECORDS`` holds one ``<record id> <payload>``
per line (the payload is JSON, one line). Each record goes with a ``record_id`` header, and with the
record id as key when ``keyed`` (as jobcompd sends it; without a key as the plugin and rsyslog do).
``sticky`` keys it too, but chooses its partition as librdkafka does for a record without a key:
one of the topic's ``PARTITIONS`` for ``sticky.partitioning.linger.ms`` (twice ``linger.ms``), then
another at random. The first ``WARMUP`` records are sent 10 ms apart and delivered before the
others are sent at ``PER_S`` a second. Prints a JSON object: record id → the time (``time.time()``)
its ``produce()`` was called, for the records after the warm-up.
"""

from __future__ import annotations

import json
import random
import sys
import time
from typing import Any

from confluent_kafka import Producer


def configured_as_jobcompd(bootstrap: str, **more: Any) -> dict[str, Any]:
    """A producer's settings as jobcompd's default configuration makes them (the bench's floors)."""
    return {"bootstrap.servers": bootstrap, "linger.ms": 5, "enable.idempotence": True, "acks": "all", **more}


class StickyPartition:
    """The partition for records produced now, as jobcompd's ``"sticky"`` chooses it: one of the
    topic's ``partitions`` for ``sticky.partitioning.linger.ms`` (twice ``linger.ms``), then another
    at random."""

    def __init__(self, partitions: int, config: dict[str, Any]) -> None:
        self._partitions = partitions
        self._sticky_s = 2 * config["linger.ms"] / 1000.0
        self._partition, self._until = 0, 0.0

    def __call__(self) -> int:
        now = time.monotonic()
        if now >= self._until:
            self._partition, self._until = random.randrange(self._partitions), now + self._sticky_s
        return self._partition


def main(argv: list[str]) -> int:
    bootstrap, topic, mode, per_s, path, warmup, partitions = argv
    records = [line.rstrip(b"\n").split(b" ", 1) for line in open(path, "rb")]  # noqa: SIM115
    config = configured_as_jobcompd(bootstrap)
    producer = Producer(config)
    sticky = StickyPartition(int(partitions), config)

    def produce(rid: bytes, payload: bytes) -> None:
        if mode == "sticky":
            producer.produce(topic, payload, rid, partition=sticky(), headers=[("record_id", rid)])
        else:
            producer.produce(topic, payload, rid if mode == "keyed" else None, headers=[("record_id", rid)])
        producer.poll(0)

    for rid, payload in records[: int(warmup)]:
        produce(rid, payload)
        time.sleep(0.01)
    if producer.flush(60):
        raise SystemExit("the warm-up was not delivered")
    sent: dict[str, float] = {}
    start = time.time() + 0.05
    for i, (rid, payload) in enumerate(records[int(warmup) :]):
        delay = start + i / float(per_s) - time.time()
        if delay > 0:
            time.sleep(delay)
        sent[rid.decode()] = time.time()
        produce(rid, payload)
    if producer.flush(60):
        raise SystemExit("not every record was delivered")
    json.dump(sent, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
