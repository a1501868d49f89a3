"""An idempotent producer asks for its producer id as soon as a broker is up (jobcompd.producer_id),
not when librdkafka's half-second timer fires: against a real mock cluster, timed by the brokers."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from jobcompd.config import KafkaSettings, load_settings
from jobcompd.producer import Sender
from jobcompd.producer_id import hasten_producer_id
from jobcompd.state import NewRecord, State
from tests.brokers.mockcluster import ApiKey, MockCluster
from tests.jobcompd_env import JobcompdEnv

TOPIC = "jobs"


def _producer_id_asked_after(mock_cluster: MockCluster) -> float:
    """Seconds from making an idempotent producer (and producing one record) to the brokers
    receiving its InitProducerId request; the record is acknowledged."""
    mock_cluster.create_topic(TOPIC, 4)
    mock_cluster.start_request_tracking()
    reports: list[object] = []
    made = time.monotonic()
    producer = Producer({
        "bootstrap.servers": mock_cluster.bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        "linger.ms": 5,
    })
    asking = hasten_producer_id(producer, TOPIC, lambda: bool(reports))
    producer.produce(TOPIC, b"payload", b"key", on_delivery=lambda err, _msg: reports.append(err))
    deadline = time.monotonic() + 30
    while not reports and time.monotonic() < deadline:
        producer.poll(0.05)
    assert reports == [None]
    asking.join(timeout=5)  # done once the record is delivered
    assert not asking.is_alive()
    asked = [r.timestamp_us / 1e6 for r in mock_cluster.requests() if r.api_key == ApiKey.INIT_PRODUCER_ID]
    assert asked, "no InitProducerId request reached the brokers"
    return min(asked) - made


def test_a_hastened_producer_asks_for_its_id_once_a_broker_is_up(mock_cluster: MockCluster) -> None:
    # A broker is up within milliseconds on loopback; the bound leaves a wide margin under load
    # and still comes before librdkafka's own timer (which fires at 0.5 s, or later).
    assert _producer_id_asked_after(mock_cluster) < 0.4


def test_it_asks_past_the_first_half_second_until_done(mock_cluster: MockCluster) -> None:
    # A broker slow to come up (TLS, SASL, a distant cluster) still has the id asked for at once.
    mock_cluster.create_topic(TOPIC, 1)
    producer = Producer({"bootstrap.servers": mock_cluster.bootstrap, "enable.idempotence": True})
    finished = threading.Event()
    mock_cluster.start_request_tracking()
    asking = hasten_producer_id(producer, TOPIC, finished.is_set)
    time.sleep(1.0)
    assert asking.is_alive()
    finished.set()
    asking.join(timeout=5)
    assert not asking.is_alive()
    metadata = [r for r in mock_cluster.requests() if r.api_key == ApiKey.METADATA]
    assert len(metadata) >= 5


def test_the_sender_started_with_sticky_partitions_delivers_its_first_records_at_once(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    # The partitions' look-up of "sticky" (the default) put the id off by half a second, or a
    # whole one, at most starts: five starts, each timed.
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    settings = load_settings(env.config)
    assert settings.kafka.partitioning == "sticky" and settings.kafka.idempotent
    mock_cluster.start_request_tracking()
    with State.open(env.state_dir, synchronous="normal") as state:
        for start in range(0, 100, 20):
            mock_cluster.clear_requests()
            state.commit_batch([NewRecord(f"r{i:03d}", i, b'{"jobid":%d}' % i, "log") for i in range(start, start + 20)])
            started = time.monotonic()
            sender = Sender(state, settings.kafka)
            sender.wake()
            deadline = started + 30
            while state.spool_depth() and time.monotonic() < deadline:
                sender.pump(0.01)
            assert state.spool_depth() == 0
            sender.close()
            for thread in threading.enumerate():
                if thread.name == "jobcompd-producer-id":
                    thread.join(timeout=5)  # it stops once its producer delivered, or is let go
                    assert not thread.is_alive()
            asked = [r.timestamp_us / 1e6 for r in mock_cluster.requests() if r.api_key == ApiKey.INIT_PRODUCER_ID]
            assert asked and min(asked) - started < 0.4, f"start {start // 20}"


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("T", True), (True, True), ("1", True), ("false", False), ("0", False), (False, False)],
)
def test_idempotent_reads_the_property_as_librdkafka_does(value: object, expected: bool) -> None:
    assert KafkaSettings("jobs", {"enable.idempotence": str(value)}).idempotent is expected


def test_a_producer_without_the_property_is_not_idempotent() -> None:
    assert KafkaSettings("jobs", {}).idempotent is False
