"""Self-tests of the test brokers: what a real producer sends is what a real consumer reads back.

They run confluent-kafka's Producer against each broker kind over loopback TCP, and, on the
mock cluster, check that each injected fault really happens and that the client sees it.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import KafkaError, Message, Producer
from confluent_kafka.admin import AdminClient

from tests.brokers import Broker, consume_all
from tests.brokers.mockcluster import ApiKey, MockCluster, MockClusterError
from tests.jobcompd_env import alive

pytestmark = pytest.mark.timeout(90)

N_MESSAGES = 1000
PRODUCER_CONF: dict[str, Any] = {"enable.idempotence": True, "acks": "all", "linger.ms": 5}

Headers = list[tuple[str, str | bytes | None]]


@dataclass(frozen=True)
class Record:
    """A message as produced."""

    key: bytes
    value: bytes
    headers: Headers


@dataclass(frozen=True)
class Delivery:
    """One delivery report."""

    key: bytes | None
    error: KafkaError | None
    partition: int
    offset: int
    at: float  # time.monotonic() when the report was served


class DeliveryLog:
    """Delivery callback that keeps every report."""

    def __init__(self) -> None:
        self.reports: list[Delivery] = []

    def __call__(self, err: KafkaError | None, msg: Message) -> None:
        partition, offset = msg.partition(), msg.offset()
        self.reports.append(
            Delivery(
                msg.key(),
                err,
                -1 if partition is None else partition,
                -1 if offset is None else offset,
                time.monotonic(),
            )
        )

    def by_key(self) -> dict[bytes | None, Delivery]:
        out: dict[bytes | None, Delivery] = {}
        for report in self.reports:
            assert report.key not in out, f"two delivery reports for {report.key!r}"
            out[report.key] = report
        return out

    def failed(self) -> list[Delivery]:
        return [r for r in self.reports if r.error is not None]


def make_record(i: int) -> Record:
    """Record ``i``: printable key, binary value of varying length, repeated and null headers."""
    return Record(
        key=f"key-{i:05d}".encode(),
        value=f"value-{i}:".encode() + bytes(range(i % 256)),
        headers=[
            ("seq", str(i).encode()),
            ("h", b"first"),
            ("h", b"second"),
            ("binary", bytes([0xFF, 0x00, i % 256])),
            ("null", None),
        ],
    )


def produce(producer: Producer, topic: str, records: Iterable[Record], log: DeliveryLog) -> None:
    for rec in records:
        producer.produce(topic, key=rec.key, value=rec.value, headers=rec.headers, on_delivery=log)
        producer.poll(0)


def coordinates(msg: Message) -> tuple[bytes, int, int]:
    """``(key, partition, offset)`` of a consumed message (all set, or the test fails)."""
    key, partition, offset = msg.key(), msg.partition(), msg.offset()
    assert isinstance(key, bytes) and partition is not None and offset is not None, msg
    return key, partition, offset


def assert_read_back_exactly(
    messages: list[Message], records: list[Record], log: DeliveryLog
) -> None:
    """Every record arrived exactly once, intact, where its delivery report said, in order."""
    coords = [coordinates(m) for m in messages]
    counts = collections.Counter(key for key, _, _ in coords)
    duplicated = sorted(k for k, n in counts.items() if n > 1)
    assert not duplicated, f"{len(duplicated)} keys read more than once, e.g. {duplicated[:5]}"
    expected = {r.key: r for r in records}
    missing = sorted(expected.keys() - counts.keys())
    assert not missing, f"{len(missing)} records never arrived, e.g. {missing[:5]}"
    unexpected = sorted(counts.keys() - expected.keys())
    assert not unexpected, f"records nobody produced: {unexpected[:5]}"
    assert len(messages) == len(records)

    delivered = log.by_key()
    for msg, (key, partition, offset) in zip(messages, coords, strict=True):
        rec = expected[key]
        assert msg.value() == rec.value, key
        assert msg.headers() == rec.headers, key
        report = delivered[key]
        assert (partition, offset) == (report.partition, report.offset), key

    # Within a partition, offsets must follow production order.
    position = {r.key: i for i, r in enumerate(records)}
    per_partition: dict[int, list[tuple[int, bytes]]] = collections.defaultdict(list)
    for key, partition, offset in coords:
        per_partition[partition].append((offset, key))
    for partition, entries in per_partition.items():
        order = [position[key] for _, key in sorted(entries)]
        assert order == sorted(order), f"partition {partition} out of production order"


# -- both broker kinds -------------------------------------------------------------------------


def test_create_topic_is_visible_in_metadata(broker: Broker) -> None:
    broker.create_topic("selftest-meta", partitions=3)
    metadata = AdminClient(broker.client_config()).list_topics("selftest-meta", timeout=10)
    tmeta = metadata.topics["selftest-meta"]
    assert tmeta.error is None
    assert sorted(tmeta.partitions) == [0, 1, 2]
    assert broker.kind in ("mock", "tansu")


def test_roundtrip_keys_values_headers(broker: Broker) -> None:
    topic = "selftest-roundtrip"
    broker.create_topic(topic, partitions=4)
    records = [make_record(i) for i in range(N_MESSAGES)]
    log = DeliveryLog()
    producer = Producer(broker.client_config(**PRODUCER_CONF))

    produce(producer, topic, records, log)
    assert producer.flush(30) == 0

    assert [(r.key, r.error) for r in log.failed()] == []
    assert len(log.reports) == N_MESSAGES
    messages = consume_all(broker.bootstrap, topic, expected=N_MESSAGES, timeout=30)
    assert_read_back_exactly(messages, records, log)
    assert len({m.partition() for m in messages}) > 1, "keys should spread over partitions"


# -- mock cluster faults ----------------------------------------------------------------------


def test_mock_broker_down_then_up_delivers_everything_once(mock_cluster: MockCluster) -> None:
    topic, leader, partitions = "selftest-outage", 1, 4
    mock_cluster.create_topic(topic, partitions=partitions, replication_factor=3)
    for p in range(partitions):
        mock_cluster.set_partition_leader(topic, p, leader)
    records = [make_record(i) for i in range(N_MESSAGES)]
    before, during, after = records[:300], records[300:700], records[700:]
    log = DeliveryLog()
    producer = Producer(
        mock_cluster.client_config(
            **PRODUCER_CONF,
            **{"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 500},
        )
    )

    produce(producer, topic, before, log)
    # Nothing in flight when the broker goes down: the mock does not deduplicate retries of a
    # non-transactional idempotent producer (see MockCluster), so a cut-off in-flight request
    # would come back as a duplicate that a real broker would have dropped.
    assert producer.flush(15) == 0
    mock_cluster.broker_down(leader)
    down_at = time.monotonic()
    for i in range(0, len(during), 20):
        produce(producer, topic, during[i : i + 20], log)
        producer.poll(0.1)
    producer.poll(max(0.0, down_at + 3.0 - time.monotonic()))
    mock_cluster.broker_up(leader)
    up_at = time.monotonic()
    produce(producer, topic, after, log)
    assert producer.flush(30) == 0

    assert [(r.key, r.error) for r in log.failed()] == []
    delivered = log.by_key()
    assert len(delivered) == N_MESSAGES
    early = [r.key for r in during if delivered[r.key].at < up_at]
    assert early == [], "delivered while the partition leader was down"
    assert all(delivered[r.key].at < down_at for r in before)
    messages = consume_all(mock_cluster.bootstrap, topic, expected=N_MESSAGES, timeout=30)
    assert_read_back_exactly(messages, records, log)


@pytest.mark.parametrize(
    "error_code",
    [KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED],
    ids=["MSG_SIZE_TOO_LARGE", "TOPIC_AUTHORIZATION_FAILED"],
)
def test_mock_injected_produce_error_reaches_delivery_report(
    mock_cluster: MockCluster, error_code: int
) -> None:
    topic = "selftest-produce-error"
    mock_cluster.create_topic(topic, partitions=1)
    log = DeliveryLog()
    producer = Producer(mock_cluster.client_config(**PRODUCER_CONF))
    warmup, victim, later = make_record(0), make_record(1), make_record(2)

    produce(producer, topic, [warmup], log)
    assert producer.flush(10) == 0
    mock_cluster.push_request_errors(ApiKey.PRODUCE, [error_code])
    produce(producer, topic, [victim], log)
    assert producer.flush(10) == 0

    reports = log.by_key()
    assert reports[warmup.key].error is None
    victim_error = reports[victim.key].error
    assert victim_error is not None and victim_error.code() == error_code
    survivors = [warmup]
    if error_code == KafkaError.MSG_SIZE_TOO_LARGE:
        # One pushed error fails one request; the next one goes through.
        produce(producer, topic, [later], log)
        assert producer.flush(10) == 0
        assert log.by_key()[later.key].error is None
        survivors.append(later)
    # (TOPIC_AUTHORIZATION_FAILED makes librdkafka refuse further produce() to the topic.)
    messages = consume_all(mock_cluster.bootstrap, topic, expected=len(survivors), timeout=10)
    assert [m.key() for m in messages] == [r.key for r in survivors]


def test_mock_latency_makes_messages_time_out(mock_cluster: MockCluster) -> None:
    # The timeout leaves room for a slow first connection (idempotent producer set-up).
    topic, rtt_ms, timeout_ms = "selftest-latency", 8000, 3000
    mock_cluster.create_topic(topic, partitions=1)
    log = DeliveryLog()
    producer = Producer(
        mock_cluster.client_config(**PRODUCER_CONF, **{"message.timeout.ms": timeout_ms})
    )
    records = [make_record(i) for i in range(7)]

    produce(producer, topic, records[:1], log)
    assert producer.flush(10) == 0
    assert log.reports[0].error is None

    mock_cluster.set_rtt(-1, rtt_ms)
    slow_from = time.monotonic()
    produce(producer, topic, records[1:6], log)
    assert producer.flush(10) == 0
    slow = log.reports[1:]
    assert [r.error.code() if r.error else None for r in slow] == [KafkaError._MSG_TIMED_OUT] * 5
    # Reported by the client's own timeout, well before any delayed response could arrive.
    assert all(r.at - slow_from < (rtt_ms - 2000) / 1000 for r in slow)

    mock_cluster.set_rtt(-1, 0)
    produce(producer, topic, records[6:], log)
    assert producer.flush(10) == 0
    assert log.reports[-1].key == records[6].key and log.reports[-1].error is None


def test_mock_broker_specific_errors_and_rtts(mock_cluster: MockCluster) -> None:
    topic = "selftest-broker-errors"
    mock_cluster.create_topic(topic, partitions=1)
    mock_cluster.set_partition_leader(topic, 0, 2)
    mock_cluster.push_broker_request_errors(
        2, ApiKey.PRODUCE, [(KafkaError.NOT_ENOUGH_REPLICAS, 300), KafkaError.NO_ERROR]
    )
    assert mock_cluster.broker_error_count(2, ApiKey.PRODUCE) == 2
    log = DeliveryLog()
    producer = Producer(mock_cluster.client_config(**PRODUCER_CONF))
    record = make_record(0)

    produce(producer, topic, [record], log)
    assert producer.flush(10) == 0

    # NOT_ENOUGH_REPLICAS is retriable: the producer retried and succeeded, using up both.
    assert [r.error for r in log.reports] == [None]
    assert mock_cluster.broker_error_count(2, ApiKey.PRODUCE) == 0
    messages = consume_all(mock_cluster.bootstrap, topic, expected=1, timeout=10)
    assert [m.key() for m in messages] == [record.key]


def test_mock_request_tracking(mock_cluster: MockCluster) -> None:
    topic = "selftest-tracking"
    mock_cluster.create_topic(topic, partitions=1)
    mock_cluster.set_partition_leader(topic, 0, 3)
    mock_cluster.start_request_tracking()
    producer = Producer(mock_cluster.client_config(**PRODUCER_CONF))
    log = DeliveryLog()
    produce(producer, topic, [make_record(0)], log)
    assert producer.flush(10) == 0

    produce_requests = [r for r in mock_cluster.requests() if r.api_key == ApiKey.PRODUCE]
    assert [r.broker_id for r in produce_requests] == [3]
    mock_cluster.clear_requests()
    assert mock_cluster.requests() == []


def test_mock_refused_command_raises(mock_cluster: MockCluster) -> None:
    mock_cluster.create_topic("selftest-dup", partitions=1)
    with pytest.raises(MockClusterError) as excinfo:
        mock_cluster.create_topic("selftest-dup", partitions=1)
    assert excinfo.value.code == KafkaError.TOPIC_ALREADY_EXISTS
    with pytest.raises(MockClusterError):
        mock_cluster.broker_down(42)
    mock_cluster.broker_down(1)  # the child is still serving after a refusal
    mock_cluster.broker_up(1)


# -- process hygiene --------------------------------------------------------------------------


def test_mock_cluster_stop_reaps_child() -> None:
    cluster = MockCluster(brokers=1).start()
    pid = cluster.pid
    assert pid is not None and alive(pid)
    cluster.stop()
    cluster.stop()  # idempotent
    assert not alive(pid)
    with pytest.raises(RuntimeError):
        cluster.broker_down(1)


@pytest.mark.parametrize("kind", ["mock", "tansu"])
def test_broker_process_dies_with_its_parent(kind: str, tmp_path: Path) -> None:
    """A test process that dies without cleaning up must not leave a broker running."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from tests.brokers.mockcluster import MockCluster
        from tests.brokers.tansu import TansuBroker
        broker = {{"mock": MockCluster, "tansu": TansuBroker}}[{kind!r}]().start()
        print(broker.pid, flush=True)
        os._exit(0)  # no stop(), no atexit
        """
    )
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", script],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        # The dying parent cannot remove its temp dir; keep it under pytest's.
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid), f"{kind} broker process {pid} outlived its parent"

