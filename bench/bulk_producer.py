"""A producer alone at full speed (``make bench``'s throughput floor): librdkafka through
confluent-kafka, as jobcompd configures and drives it, sending the records of a log file — through
jobcompd's channel where the compiled send loop is in use, as jobcompd sends them
(:func:`jobcompd.sendloop.channel`), else through ``produce()`` and a report callback.

    python -m bench.bulk_producer BOOTSTRAP TOPIC LINES PARTITIONING PARTITIONS

The lines of ``LINES`` are parsed and encoded first (untimed), as jobcompd encodes them. Then
each record is produced with its record id as key and in a ``record_id`` header, as jobcompd
sends it, at most ``REPLAY_WINDOW`` records unreported at a time, reports served by ``poll()``
after each batch of ``BATCH_LINES`` and counted by a callback each (the key kept, as jobcompd
keeps it): what jobcompd's send side costs with nothing else to do — no reading, no parsing, no
state. ``PARTITIONING`` is jobcompd's ``kafka.partitioning``: ``sticky`` sends each batch to one of
the topic's ``PARTITIONS``, another one at random after twice ``linger.ms``, as jobcompd does;
``key`` leaves the partition to librdkafka's partitioner (by key). Prints a JSON object: the
records, how many were reported delivered, and the seconds from the second ``produce()`` to the last
report (``timed``: the records sent meanwhile; the first is sent alone before, to connect), with the
CPU seconds of the process meanwhile (``cpu``).
"""

from __future__ import annotations

import json
import sys
import time

from confluent_kafka import KafkaError, Message, Producer

from bench.steady_producer import StickyPartition, configured_as_jobcompd
from jobcompd import sendloop
from jobcompd.batch import ParseSpec, parse_batch
from jobcompd.logfile import BATCH_LINES
from jobcompd.producer import RECORD_ID_HEADER, REPLAY_WINDOW
from jobcompd.state import SpooledRecord


def main(argv: list[str]) -> int:
    bootstrap, topic, path, partitioning, partitions = argv
    with open(path, "rb") as fh:
        lines = fh.readlines()
    spec = ParseSpec(("UTC", None), None, 65536)  # as the bench's configuration reads them
    records: list[tuple[str, bytes]] = []
    for at in range(0, len(lines), BATCH_LINES):
        batch = parse_batch(lines[at : at + BATCH_LINES], spec)
        if batch.bad:
            raise SystemExit(f"a line did not parse: {batch.bad[0]}")
        records += zip(batch.rids, batch.payloads, strict=True)
    del lines
    delivered: list[bytes | None] = []
    failed: list[KafkaError] = []

    def on_delivery(error: KafkaError | None, message: Message) -> None:
        if error is None:
            delivered.append(message.key())
        else:
            failed.append(error)

    made, plugin = sendloop.channel()
    config = configured_as_jobcompd(bootstrap, on_delivery=on_delivery)
    producer = Producer({**plugin, **config})
    sticky = StickyPartition(int(partitions), config)

    def next_partition() -> int:  # of the next batch (-1: by key)
        return sticky() if partitioning == "sticky" else -1

    # The first record alone, before the clock starts: connected to the brokers, the partitions
    # known, the idempotent producer's id acquired (jobcompd's figures include its start-up).
    rid, payload = records[0]
    producer.produce(topic, payload, rid, headers=[(RECORD_ID_HEADER, rid)])
    if producer.flush(30) or not delivered:
        raise SystemExit("the first record was not delivered")
    produce = producer.produce
    reports = sendloop.Reports()  # (the channel's: its delivered record ids, and its failures)
    in_flight: dict[str, tuple[int, int, int]] = {}

    def poll(timeout: float) -> None:
        producer.poll(timeout)
        if made is not None:
            failed.extend(error for error, _ in sendloop.failures(made.take(reports)))
            delivered.extend(reports.delivered)
            reports.delivered = []

    start, cpu0 = time.monotonic(), time.process_time()  # (every thread's, librdkafka's too)
    for at in range(1, len(records), BATCH_LINES):
        while at - len(delivered) - len(failed) > REPLAY_WINDOW - BATCH_LINES:  # (the window)
            poll(0.05)
        if made is not None:
            backlog = [SpooledRecord(at + i, rid, 0, payload, "", 0.0, 0, None)
                       for i, (rid, payload) in enumerate(records[at : at + BATCH_LINES])][::-1]
            sent, _, refused = made.produce_records(producer, topic, next_partition(), backlog, 0, 1 << 40,
                                                    in_flight, RECORD_ID_HEADER)
            if refused is not None:
                raise SystemExit(f"a record was refused: {refused}")
            in_flight.clear()  # (counted by their reports here; jobcompd settles its own by them)
        else:
            chosen = next_partition()
            for rid, payload in records[at : at + BATCH_LINES]:
                produce(topic, payload, rid, chosen, headers=[(RECORD_ID_HEADER, rid)])
        poll(0)
    while len(delivered) + len(failed) < len(records) and time.monotonic() - start < 600:
        poll(0.05)
    elapsed, cpu = time.monotonic() - start, time.process_time() - cpu0
    json.dump({"records": len(records), "timed": len(records) - 1, "delivered": len(delivered),
               "failed": len(failed), "elapsed": elapsed, "cpu": cpu,
               "sending": "produce()" if made is None else "channel"}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
