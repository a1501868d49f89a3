"""The producer worker on its own: a real State, a real Sender, librdkafka's mock cluster."""

from __future__ import annotations

import contextlib
import dataclasses
import time
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from confluent_kafka import KafkaError, KafkaException, Producer
from structlog.testing import capture_logs

from jobcompd import reports, sendloop
from jobcompd.batch import RecordBatch
from jobcompd.config import load_settings
from jobcompd.producer import (
    _OFFERED_BYTES,
    _OFFERED_BYTES_WINDOW_FULL,
    EARLY_WINDOW,
    REPLAY_EARLY_WINDOW,
    Sender,
    SenderThread,
)
from jobcompd.state import BATCH_RECORDS, BatchResult, Delivery, NewRecord, SpooledRecord, State
from tests.brokers.mockcluster import MockCluster
from tests.brokers.readback import consume_all
from tests.jobcompd_env import SPREAD_BY_KEY, JobcompdEnv
from tests.test_sendloop import compiled_only
from tests.test_state import state_busy

MSG_SIZE_TOO_LARGE = 10  # the broker's error code, and the Kafka API key of a produce request
PRODUCE = 0


class CountingState(State):
    """The real State, counting how often the spool is read back, and the settling transactions."""

    reads = 0
    records_read = 0
    settled = 0  # transactions settling delivery reports

    def mark_delivered(self, deliveries: Sequence[Delivery], *, wait: bool = True) -> int | None:
        done = super().mark_delivered(deliveries, wait=wait)
        self.settled += done is not None
        return done

    def pending(self, *, after_seq: int = 0, limit: int = 1000, whole_rows: bool = False) -> list[SpooledRecord]:
        self.reads += 1
        found = super().pending(after_seq=after_seq, limit=limit, whole_rows=whole_rows)
        self.records_read += len(found)
        return found


def new(start: int, stop: int) -> list[NewRecord]:
    return [NewRecord(f"r{i:06d}", i, b'{"jobid":%d}' % i, "log") for i in range(start, stop)]


def send_all(sender: Sender, state: State, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not sender.idle() or state.spool_depth():
        assert time.monotonic() < deadline, f"{state.spool_depth()} records still spooled"
        sender.pump(0.05)


def assert_sent_in_order(mock_cluster: MockCluster, count: int, start: int = 0) -> None:
    """Records r000000… (from r{start}) arrived once each, in spool order (a one-partition topic)."""
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=count - start, timeout=30)
    assert [m.key() for m in got] == [f"r{i:06d}".encode() for i in range(start, count)]


def test_offered_records_go_out_once_in_spool_order_from_memory_or_read_back(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 1)  # one partition: the order is visible
    # No look at the spool on a timer during the test: only wake() and an empty backlog read it.
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        state.commit_batch(new(0, 300))  # spooled another way: never offered
        later = state.commit_batch(new(300, 600))
        assert list(later.fresh) == state.pending(after_seq=300)
        sender.offer(later.fresh)  # not next in the spool (0-299 come first): read back instead
        sender.wake()
        send_all(sender, state)
        reads = state.reads

        third = state.commit_batch(new(600, 900))
        assert list(third.fresh) == state.pending()  # exactly what reading back would give
        state.reads = reads
        sender.offer(third.fresh)  # next in the spool: sent from memory
        sender.offer(later.fresh)  # sent already: ignored
        send_all(sender, state)
        assert state.reads == reads, "offered records were read back from the spool"
        assert sender.close() == 0
        assert state.stats().delivered_total == 900

    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=900, timeout=30)
    assert [m.key() for m in got] == [f"r{i:06d}".encode() for i in range(900)]
    assert [m.value() for m in got] == [b'{"jobid":%d}' % i for i in range(900)]


def test_offered_batches_past_their_byte_bound_are_dropped_and_read_back(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60", kafka_toml=SPREAD_BY_KEY)
    payload = b"y" * (_OFFERED_BYTES // 32)
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        batches = [
            state.commit_batch([NewRecord(f"r{b}-{i:02d}", 100 * b + i, payload, "log") for i in range(12)])
            for b in range(2)
        ]
        for batch in batches:  # 3/4 of the bound: both wait in memory
            sender.offer(batch.fresh)
        sender.wake()
        send_all(sender, state)
        assert state.records_read == 0, "offered records were read back from the spool"

        more = [
            state.commit_batch([NewRecord(f"s{b}-{i:02d}", 1000 + 100 * b + i, payload, "log") for i in range(12)])
            for b in range(3)
        ]
        for batch in more:  # the third goes past the bound: what is held is let go
            sender.offer(batch.fresh)
        sender.wake()
        send_all(sender, state)
        assert state.records_read == 36, "records offered past the bound were kept in memory"
        assert sender.close() == 0
        assert state.stats().delivered_total == 60
    assert len(consume_all(mock_cluster.bootstrap, "mycluster", expected=60, timeout=30)) == 60


@contextlib.contextmanager
def spooled_for(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, count: int
) -> Iterator[tuple[State, Sender, BatchResult, JobcompdEnv]]:
    """A sender (a window of 50) caught up with an empty spool, and ``count`` records just spooled
    for it, not offered yet; deliveries wait for a busy state as long as it takes."""
    monkeypatch.setattr(reports, "_UNSETTLED_S", 60.0)
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, window=50)
        sender.pump(0)  # the spool is empty: what comes next is offered
        yield state, sender, state.commit_batch(new(0, count)), env
        send_all(sender, state)
        assert sender.close() == 0
        assert state.stats().delivered_total == count
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=count, timeout=30)
    assert sorted(m.key() for m in got) == [f"r{i:06d}".encode() for i in range(count)]


def test_deliveries_found_while_the_state_is_busy_wait_out_of_the_window(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender does not wait for the state to settle deliveries while another thread has it:
    the records leave the window and wait; they are settled, and counted, once it is free."""
    with spooled_for(mock_cluster, tmp_path, monkeypatch, 40) as (state, sender, batch, env):
        with state_busy(state) as release:
            sender.offer(batch.fresh)
            deadline = time.monotonic() + 20
            while sender.counters.produced < 40 or sender._in_flight:
                assert time.monotonic() < deadline, "the sender waited for the state"
                sender.pump(0.05)
            assert sender.counters.delivered == 0 and not sender.idle()
            assert len(sender._unsettled) == 40 and sender._room() == 50
            assert env.count("spool") == 40  # still spooled: a crash now sends them again
            release.set()
        send_all(sender, state)
        assert sender.counters.delivered == 40 and env.count("spool") == 0


def test_a_window_of_deliveries_waits_for_the_state(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Deliveries wait for a busy state up to a window of them: then the sender waits for it."""
    with spooled_for(mock_cluster, tmp_path, monkeypatch, 120) as (state, sender, batch, _):
        most = 0
        with state_busy(state, hold_s=3):
            sender.offer(batch.fresh)
            deadline = time.monotonic() + 30
            while sender.counters.delivered < 120:
                assert time.monotonic() < deadline, f"{sender.counters.delivered} of 120 delivered"
                sender.pump(0.05)
                most = max(most, len(sender._unsettled))
        assert most < 50


def test_the_window_bounds_the_bytes_handed_to_librdkafka(mock_cluster: MockCluster, tmp_path: Path) -> None:
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    big = [NewRecord(f"r{i:06d}", i, b"x" * 10_000, "log") for i in range(20)]
    with State.open(env.state_dir, synchronous="normal") as state:
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.broker_down(broker_id)
        sender = Sender(state, load_settings(env.config).kafka, window_bytes=50_000)
        state.commit_batch(big)
        sender.wake()
        for _ in range(5):
            sender.pump(0.05)
        assert sender.counters.produced == 5  # 5 x 10 kB: the window is full, the rest waits in the spool
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.broker_up(broker_id)
        send_all(sender, state, timeout=60)
        assert sender.counters.produced == 20
        assert state.stats().delivered_total == 20


def test_send_now_produces_on_the_callers_thread_only_when_the_sender_is_caught_up(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 1)  # one partition: the order is visible
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, window=250)
        sender.start()
        first = state.commit_batch(new(0, 100))
        assert sender.send_now(first.fresh)  # next in the spool (seq 1): produced here and now
        assert sender.counters.produced == 100
        second = state.commit_batch(new(100, 300))
        assert not sender.send_now(second.fresh)  # 100 + 200 would not fit in the window of 250
        assert sender.counters.produced == 100
        third = state.commit_batch(new(300, 350))
        assert not sender.send_now(third.fresh)  # not next: 100-299 come first
        sender.wake()
        send_all(sender, state)  # the sender reads 100-349 from the spool
        reads = state.records_read
        fourth = state.commit_batch(new(350, 400))
        assert sender.send_now(fourth.fresh)  # caught up again
        send_all(sender, state)
        assert state.records_read == reads and sender.close() == 0
        assert state.stats().delivered_total == 400
    assert_sent_in_order(mock_cluster, 400)


def send_early(sender: Sender, records: Sequence[NewRecord]) -> int:
    return sender.send_early([r.rid for r in records], [r.jobid for r in records], [r.payload for r in records])


def reports_for_early(sender: Sender, count: int, timeout: float = 30) -> None:
    """Serve reports until ``count`` of records sent early wait for their batch's commit."""
    deadline = time.monotonic() + timeout
    while len(sender._early_delivered) + len(sender._early_failed) < count:
        assert time.monotonic() < deadline, f"{len(sender._early_delivered)} reports of {count}"
        sender.pump(0.05)


@contextlib.contextmanager
def caught_up_sender(
    mock_cluster: MockCluster, tmp_path: Path, **options: Any
) -> Iterator[tuple[JobcompdEnv, CountingState, Sender]]:
    """A one-partition topic, a state and a sender that has looked at its empty spool (caught up)."""
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, **options)
        sender.wake()
        send_all(sender, state)
        yield env, state, sender


def test_records_sent_before_their_commit_are_settled_once_it_is_and_sent_once(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    with caught_up_sender(mock_cluster, tmp_path, window=250) as (_, state, sender):
        early = new(0, 100)
        assert send_early(sender, early) == 100
        reports_for_early(sender, 100)  # delivered, and not settled: no batch holds them yet
        assert sender.counters.delivered == 0 and state.stats().delivered_total == 0
        assert not sender.idle()

        assert sender.confirm(state.commit_batch(early).fresh) == []
        send_all(sender, state)
        assert state.stats().delivered_total == 100 and sender.counters.delivered == 100

        # A commit that failed: its batch is read again with a line more, and committed.
        again = new(100, 150)
        assert send_early(sender, again) == 50
        reports_for_early(sender, 50)
        assert send_early(sender, [*again, *new(150, 160)]) == 10  # the others are in flight
        assert sender.confirm(state.commit_batch([*again, *new(150, 160)]).fresh) == []

        # Some produced early, the rest as usual once spooled: sent next, in spool order.
        part = new(160, 200)
        assert send_early(sender, part[:30]) == 30
        rest = sender.confirm(state.commit_batch(part).fresh)
        assert [r.rid for r in rest] == [r.rid for r in part[30:]]
        assert sender.send_now(rest)
        send_all(sender, state)
        assert state.records_read == 0, "records sent early were read back from the spool"
        assert sender.close() == 0
        assert state.stats().delivered_total == 200
    assert_sent_in_order(mock_cluster, 200)  # once each


def test_records_sent_early_and_acknowledged_before_their_commit_are_committed_as_delivered(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """A trickle's batch (``Daemon._early_acked``): the records sent early that Kafka acknowledged
    before the commit are taken (``take_early_acked``) and committed as delivered — never
    spooled, nothing to settle after; the others are spooled and settled by their reports once
    confirmed, as before. Each goes to Kafka once, and counts once."""
    with caught_up_sender(mock_cluster, tmp_path, window=250) as (_, state, sender):
        batch = new(0, 100)
        assert send_early(sender, batch[:60]) == 60
        reports_for_early(sender, 60)
        assert send_early(sender, batch[60:]) == 40  # their reports not served yet
        acked = sender.take_early_acked([r.rid for r in batch])
        assert acked == {r.rid for r in batch[:60]}
        assert sender.counters.delivered == 60 and sender.take_early_acked([r.rid for r in batch]) == set()
        result = commit_as_delivered(state, batch, acked)
        assert [r.rid for r in result.fresh] == [r.rid for r in batch[60:]]
        assert state.spool_depth() == 40 and state.stats().delivered_total == 60
        assert sender.confirm(result.fresh) == []  # in flight already
        send_all(sender, state)
        assert state.records_read == 0 and sender.close() == 0
        assert state.stats().delivered_total == 100 and sender.counters.delivered == 100
    assert_sent_in_order(mock_cluster, 100)  # once each


def test_a_batch_whose_later_records_were_sent_early_does_not_hold_up_the_next(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """A committed batch whose last records were sent early and first ones not: the first ones are
    sent as usual, and the next batch offered goes out at once — not at the next poll_interval
    (60 s here): the sender reads what lies between from the spool, passing over the records in
    flight. (The daemon makes no such batch; the sender must not depend on that.)"""
    with caught_up_sender(mock_cluster, tmp_path) as (_, state, sender):
        batch = new(0, 20)
        assert send_early(sender, batch[10:]) == 10
        rest = sender.confirm(state.commit_batch(batch).fresh)
        assert [r.rid for r in rest] == [r.rid for r in batch[:10]]
        assert sender.send_now(rest)
        following = state.commit_batch(new(20, 30)).fresh
        assert not sender.send_now(following)  # not next to what was sent: 10-19 lie between
        assert sender.offer(following)
        send_all(sender, state, timeout=10)
        assert sender.close() == 0
        assert state.stats().delivered_total == 30
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=30, timeout=30)
    assert sorted(m.key() for m in got) == sorted(r.rid.encode() for r in new(0, 30))  # once each


def test_records_are_sent_early_only_when_the_sender_is_caught_up(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, window=100)
        sender.start()
        assert send_early(sender, new(0, 10)) == 0  # the spool was not looked at yet
        sender.wake()
        send_all(sender, state)
        assert send_early(sender, new(0, 101)) == 0  # more than the window takes
        assert sender.offer(state.commit_batch(new(0, 10)).fresh)
        assert send_early(sender, new(10, 20)) == 0  # the offer of 0-9 is not taken yet
        send_all(sender, state)
        assert send_early(sender, new(10, 20)) == 10
        assert sender.confirm(state.commit_batch(new(10, 20)).fresh) == []
        send_all(sender, state)
        assert sender.close() == 0
        assert state.stats().delivered_total == 20
    assert_sent_in_order(mock_cluster, 20)


def test_records_sent_early_and_spooled_after_others_are_not_sent_again_when_those_are(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    with caught_up_sender(mock_cluster, tmp_path) as (_, state, sender):
        assert send_early(sender, new(0, 10)) == 10
        state.commit_batch(new(100, 110))  # spooled another way meanwhile (`deadletter retry`)
        assert sender.confirm(state.commit_batch(new(0, 10)).fresh) == []
        sender.wake()
        send_all(sender, state)  # reads 100-109 and 0-9 back from the spool: sends only 100-109
        assert sender.close() == 0
        assert state.stats().delivered_total == 20
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=20, timeout=30)
    assert sorted(m.key() for m in got) == sorted(r.rid.encode() for r in [*new(0, 10), *new(100, 110)])


def test_records_sent_early_and_reported_survive_a_producer_rebuild_before_their_commit(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    with caught_up_sender(mock_cluster, tmp_path) as (env, state, sender):
        assert send_early(sender, new(0, 50)) == 50
        reports_for_early(sender, 50)
        env.properties = {"linger.ms": "6"}  # new librdkafka properties: a new producer
        env.write_config()
        sender.reconfigure(load_settings(env.config).kafka)
        assert sender.confirm(state.commit_batch(new(0, 80)).fresh)  # 50-79: sent as usual
        sender.wake()
        send_all(sender, state)
        assert sender.close() == 0
        assert state.stats().delivered_total == 80
    assert_sent_in_order(mock_cluster, 80)  # none of 0-49 sent twice


def test_a_record_sent_early_and_refused_waits_for_its_commit_then_is_dead_lettered(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """A failed report of a record sent before its batch was committed is kept, as a delivered one
    is, until the commit: then the record is dead-lettered with the reason, once."""
    with caught_up_sender(mock_cluster, tmp_path) as (_, state, sender):
        mock_cluster.push_request_errors(PRODUCE, [MSG_SIZE_TOO_LARGE])  # the next request: all of it
        assert send_early(sender, new(0, 5)) == 5
        reports_for_early(sender, 5)
        assert len(sender._early_failed) == 5 and not state.dead_letters()  # no batch holds them yet
        assert sender.confirm(state.commit_batch(new(0, 5)).fresh) == []
        assert sender.offer(state.commit_batch(new(5, 10)).fresh)  # the broker takes these
        send_all(sender, state)
        letters = state.dead_letters()
        assert sorted(d.rid for d in letters) == [r.rid for r in new(0, 5)]
        assert all("MSG_SIZE_TOO_LARGE" in d.reason for d in letters)
        assert sender.counters.dead_lettered == 5 and sender.counters.delivered == 5
        assert sender.close() == 0
        assert state.stats().delivered_total == 5
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=5, timeout=30)
    assert [m.key() for m in got] == [r.rid.encode() for r in new(5, 10)]


def send_batch_early(sender: Sender, records: Sequence[NewRecord]) -> int:
    return sender.send_batch_early([r.rid for r in records], [r.jobid for r in records],
                                   [r.payload for r in records])


def all_reported(sender: Sender, number: int, timeout: float = 30) -> None:
    """Serve reports until every record of batch ``number`` (send_batch_early) was reported."""
    deadline = time.monotonic() + timeout
    while not sender.reported(number):
        assert time.monotonic() < deadline, "the batch's reports did not come"
        sender.pump(0.05)


def commit_as_delivered(state: State, records: Sequence[NewRecord], acked: set[str]) -> BatchResult:
    return state.commit_batch(records, delivered=[i for i, r in enumerate(records) if r.rid in acked])


def test_a_batch_sent_before_its_commit_is_committed_delivered_where_kafka_acknowledged_it(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """A backlog's batch (Sender.send_batch_early): the records Kafka acknowledged before the
    commit are committed known and delivered, never spooled; the others are spooled, stay in
    flight, and are settled by their reports once committed. Each goes to Kafka once."""
    with caught_up_sender(mock_cluster, tmp_path) as (_, state, sender):
        first = new(0, 500)
        number = send_batch_early(sender, first)
        assert number and not sender.idle()
        all_reported(sender, number)
        acked = sender.take_acked(number)
        assert acked == {r.rid for r in first}
        assert sender.counters.delivered == 500 and sender.idle()
        result = commit_as_delivered(state, first, acked)
        assert (result.spooled, result.already_known, list(result.fresh)) == (500, 0, [])
        assert sender.confirm(result.fresh) == []
        stats = state.stats()
        assert (stats.spooled_total, stats.delivered_total, stats.last_delivered_jobid) == (500, 500, 499)
        assert state.spool_depth() == 0 and state.is_known(first[-1].rid, 499)

        # Committed before any report was served: all spooled, in flight, settled as they come.
        second = new(500, 600)
        number = send_batch_early(sender, second)
        assert sender.take_acked(number) == set()
        result = commit_as_delivered(state, second, set())
        assert len(result.fresh) == 100 and state.spool_depth() == 100
        assert sender.confirm(result.fresh) == []  # all of them in flight already
        assert send_batch_early(sender, new(590, 610)) == 0  # 590-599 are in flight
        send_all(sender, state)
        assert state.spool_depth() == 0 and state.stats().delivered_total == 600

        # Part of a batch acknowledged by the time it is committed: the others' reports come
        # after it was taken (here: held back, and served then), before or after the commit.
        third = new(600, 700)
        number = send_batch_early(sender, third)
        all_reported(sender, number)
        late = [r.rid for r in third[40:]]
        sender._batches[number].acked.difference_update(late)
        sender._batch_of.update(dict.fromkeys(late, number))
        acked = sender.take_acked(number)
        assert acked == {r.rid for r in third[:40]}
        sender._reports.delivered += [rid.encode() for rid in late[:30]]
        sender.pump(0)
        result = commit_as_delivered(state, third, acked)
        assert [r.rid for r in result.fresh] == late
        assert sender.confirm(result.fresh) == []
        sender._reports.delivered += [rid.encode() for rid in late[30:]]
        send_all(sender, state)
        assert state.records_read == 0, "records sent before their commit were read back"
        assert sender.close() == 0
        assert state.stats().delivered_total == 700
    assert_sent_in_order(mock_cluster, 700)


@pytest.mark.parametrize("early", [EARLY_WINDOW, REPLAY_EARLY_WINDOW], ids=["run", "replay"])
def test_a_batch_is_sent_before_its_commit_only_within_its_window_and_when_caught_up(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, early: int
) -> None:
    """Batches sent before their commit hold at most the early window's records unreported while Kafka
    acknowledges records as they go, and no more than the usual window once it does not (brokers
    down: librdkafka holds no more than without them); and only while the sender is caught up."""
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, window=100, early_window=early)
        sender.start()
        assert send_batch_early(sender, new(0, 10)) == 0  # the spool was not looked at yet
        sender.wake()
        send_all(sender, state)
        assert not sender.early_room(early + 1)
        assert send_batch_early(sender, new(0, early + 1)) == 0
        monkeypatch.setattr("jobcompd.producer._EARLY_STALL_S", 3600.0)  # (however slow the machine)
        first = send_batch_early(sender, new(0, 50))  # none unreported: the whole window
        all_reported(sender, first)  # a report came: Kafka acknowledges as records go
        held = send_batch_early(sender, new(50, early - 10))
        assert held and not sender.early_room(11) and sender.early_room(10)
        monkeypatch.setattr("jobcompd.producer._EARLY_STALL_S", 0.0)  # no report since: the usual
        assert not sender.early_room(1)  # window (100), which these fill
        all_reported(sender, held)
        monkeypatch.setattr("jobcompd.producer._EARLY_STALL_S", 3600.0)
        assert len(sender.take_acked(held)) == early - 60 and len(sender.take_acked(first)) == 50
        assert sender.early_room(early)
        assert sender.offer(state.commit_batch(new(10_000, 10_010)).fresh)
        assert send_batch_early(sender, new(20_000, 20_005)) == 0  # an offer is not taken yet
        send_all(sender, state)
        assert sender.close() == 0
        assert state.stats().delivered_total == 10

    # Brokers down: a first batch goes; the next ones, once no report came for _EARLY_STALL_S,
    # only within the usual window (2,500).
    monkeypatch.setattr("jobcompd.producer._EARLY_STALL_S", 0.05)
    env2 = JobcompdEnv(tmp_path / "down", mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env2.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env2.config).kafka)
        sender.wake()
        send_all(sender, state)
        mock_cluster.broker_down(-1)
        try:
            assert send_batch_early(sender, new(30_000, 31_000))
            time.sleep(0.1)
            sender.pump(0)
            assert sender.early_room(1_500) and not sender.early_room(1_501)
            assert send_batch_early(sender, new(31_000, 33_000)) == 0
        finally:
            mock_cluster.broker_up(-1)


def test_a_parsed_batch_is_sent_before_its_commit_only_while_kafka_acknowledges_records(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sender.send_parsed, the parse thread's: nothing before Kafka acknowledged a record (a
    burst's first batch, or any while brokers are down, is spooled first); then a batch's new
    records, the known ones left out as the commit leaves them."""

    def parsed(records: Sequence[NewRecord]) -> RecordBatch:
        return RecordBatch([r.rid for r in records], [r.jobid for r in records],
                           [r.payload for r in records], list(range(len(records))), [], [])

    with caught_up_sender(mock_cluster, tmp_path) as (_, state, sender):
        assert sender.send_parsed(parsed(new(0, 20))) == 0  # nothing acknowledged yet
        assert sender.send_now(state.commit_batch(new(0, 20)).fresh)
        send_all(sender, state)
        monkeypatch.setattr("jobcompd.producer._EARLY_STALL_S", 3600.0)  # (however slow the machine)
        batch = new(10, 40)  # 10-19 known already
        number = sender.send_parsed(parsed(batch))
        assert number
        all_reported(sender, number)
        acked = sender.take_acked(number)
        assert acked == {r.rid for r in new(20, 40)}
        assert commit_as_delivered(state, batch, acked).fresh == []
        assert sender.close() == 0
        assert state.stats().delivered_total == 40
    assert_sent_in_order(mock_cluster, 40)  # once each


def test_a_record_of_a_batch_sent_before_its_commit_the_broker_refuses_is_spooled_and_sent_again(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """Its failed report leaves it out of the acknowledged, and out of flight: it is spooled at
    the commit, sent as usual, and dead-lettered with the reason if the broker refuses it again."""
    with caught_up_sender(mock_cluster, tmp_path) as (_, state, sender):
        mock_cluster.push_request_errors(PRODUCE, [MSG_SIZE_TOO_LARGE])  # the next request: all of it
        records = new(0, 5)
        number = send_batch_early(sender, records)
        all_reported(sender, number)
        assert sender.take_acked(number) == set() and sender.idle()
        rest = sender.confirm(commit_as_delivered(state, records, set()).fresh)
        assert [r.rid for r in rest] == [r.rid for r in records]
        assert sender.send_now(rest)
        send_all(sender, state)
        assert state.stats().delivered_total == 5 and not state.dead_letters()

        mock_cluster.push_request_errors(PRODUCE, [MSG_SIZE_TOO_LARGE, MSG_SIZE_TOO_LARGE])
        records = new(5, 10)
        number = send_batch_early(sender, records)
        all_reported(sender, number)
        assert sender.take_acked(number) == set()
        assert sender.send_now(sender.confirm(commit_as_delivered(state, records, set()).fresh))
        send_all(sender, state)
        letters = state.dead_letters()
        assert sorted(d.rid for d in letters) == [r.rid for r in records]
        assert all("MSG_SIZE_TOO_LARGE" in d.reason for d in letters)
        assert sender.close() == 0
    assert_sent_in_order(mock_cluster, 5)


def test_a_batch_sent_before_its_commit_survives_a_producer_rebuild(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """Its records the old producer delivered (before it was let go) are delivered; those it
    purged are spooled at the commit and sent by the new producer: none lost, none sent twice."""
    with caught_up_sender(mock_cluster, tmp_path) as (env, state, sender):
        records = new(0, 300)
        number = send_batch_early(sender, records)
        env.properties = {"linger.ms": "6"}  # new librdkafka properties: a new producer
        env.write_config()
        sender.reconfigure(load_settings(env.config).kafka)
        assert sender.reported(number)  # delivered while it flushed, or purged
        acked = sender.take_acked(number)
        rest = sender.confirm(commit_as_delivered(state, records, acked).fresh)
        assert {r.rid for r in rest} == {r.rid for r in records} - acked
        assert not rest or sender.send_now(rest)
        send_all(sender, state)
        assert sender.close() == 0
        assert state.stats().delivered_total == 300
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=300, timeout=30)
    assert sorted(m.key() for m in got) == sorted(r.rid.encode() for r in records)  # once each


def test_an_offered_batch_partly_read_back_is_sent_from_memory_for_the_rest(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, fetch=150)
        state.commit_batch(new(0, 100))  # spooled another way: never offered
        count = 100 + BATCH_RECORDS + 50
        offered = state.commit_batch(new(100, count))  # two rows: 100-4195, 4196-4245
        assert sender.offer(offered.fresh)
        sender.wake()
        send_all(sender, state)
        # Whole rows are read back, until they hold the 150 fetched: 0-4195. The rest from memory.
        assert state.records_read == 100 + BATCH_RECORDS
        assert sender.close() == 0
    assert_sent_in_order(mock_cluster, count)


def stuck_sender(mock_cluster: MockCluster, env: JobcompdEnv, state: State) -> tuple[Sender, list[BatchResult]]:
    """Brokers down, a sender whose window of 100 is full, and two batches spooled, each 5/8 of
    the bound on what waits in memory while the window is full."""
    mock_cluster.create_topic("mycluster", 4)
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.broker_down(broker_id)
    sender = Sender(state, load_settings(env.config).kafka, window=100)
    state.commit_batch(new(0, 100))
    sender.wake()
    sender.pump(0.05)
    assert sender.counters.produced == 100  # the window is full: no broker answers
    payload = b"z" * (_OFFERED_BYTES_WINDOW_FULL // 8)
    batches = [
        state.commit_batch([NewRecord(f"s{b}-{i}", 1000 + 10 * b + i, payload, "log") for i in range(5)])
        for b in range(2)
    ]
    return sender, batches


def test_a_sender_with_a_full_window_holds_little_of_what_it_is_offered(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender, batches = stuck_sender(mock_cluster, env, state)
        assert sender.offer(batches[0].fresh)  # 5/8 of the bound: held, to be sent next
        assert not sender.offer(batches[1].fresh)  # past it: nothing is held while brokers are down
        sender.wake()
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.broker_up(broker_id)
        send_all(sender, state, timeout=60)
        assert state.records_read == 110 and sender.close() == 0
        assert state.stats().delivered_total == 110
    assert len(consume_all(mock_cluster.bootstrap, "mycluster", expected=110, timeout=30)) == 110


def test_of_a_batch_with_records_already_known_the_new_ones_are_offered(tmp_path: Path) -> None:
    with State.open(tmp_path / "state", synchronous="normal") as state:
        assert len(state.commit_batch(new(0, 3)).fresh) == 3
        mixed = state.commit_batch(new(2, 5))
        assert (mixed.spooled, mixed.already_known) == (2, 1)
        assert [r.rid for r in mixed.fresh] == ["r000003", "r000004"]
        assert list(mixed.fresh) == state.pending(after_seq=3)
        big = state.commit_batch(new(5, 25_005))  # more than one spool row: the seqs still follow
        assert list(big.fresh) == state.pending(after_seq=5, limit=10**6)


class FatalOnce(Producer):
    """A real producer whose first produce() fails as a producer in a fatal state does.

    confluent-kafka raises ``KafkaException(_FATAL, "Unable to produce message: …")`` from
    produce() once librdkafka has a fatal error, and that error object does not say fatal().
    Under load this comes before the error callback that reports the fatal error itself.
    """

    failures = 0

    def produce(self, *args: Any, **kwargs: Any) -> None:
        if FatalOnce.failures == 0:
            FatalOnce.failures += 1
            raise KafkaException(KafkaError(KafkaError._FATAL, "Unable to produce message: Local: Fatal error"))
        super().produce(*args, **kwargs)


def test_a_fatal_error_raised_by_produce_rebuilds_and_dead_letters_nothing(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 2)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=1")
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, producer_factory=FatalOnce)
        state.commit_batch(new(0, 100))
        sender.wake()
        send_all(sender, state)
        assert FatalOnce.failures == 1
        assert state.stats().deadletter_count == 0 and sender.counters.dead_lettered == 0
        assert state.stats().delivered_total == 100
        assert sender.close() == 0
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=100, timeout=30)
    assert sorted(m.key() for m in got) == [f"r{i:06d}".encode() for i in range(100)]


def test_an_outage_costs_a_few_log_lines_not_one_per_record(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 2)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=1",
                      properties={"message.timeout.ms": "1000"})
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.broker_down(broker_id)
    with State.open(env.state_dir, synchronous="normal") as state, capture_logs() as logs:
        sender = Sender(state, load_settings(env.config).kafka)
        state.commit_batch(new(0, 500))
        sender.wake()
        deadline = time.monotonic() + 30
        while state.stats().deadletter_count < 500:
            assert time.monotonic() < deadline, state.stats()
            sender.pump(0.05)
        assert sender.close() == 0
    dead = [e for e in logs if "dead-lettered" in e["event"]]
    assert 1 <= len(dead) <= 2, dead  # the first, and a count of the rest a minute later
    assert len(logs) < 20, [e["event"] for e in logs]


def test_a_reconfigure_librdkafka_refuses_changes_nothing(mock_cluster: MockCluster, tmp_path: Path) -> None:
    # Accepted property by property, refused by librdkafka only when the producer is made
    # (the CA file does not exist): the running producer and settings stay.
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        sender.start()
        state.commit_batch(new(0, 50))
        sender.wake()
        send_all(sender, state)
        env.properties = {"security.protocol": "SSL", "ssl.ca.location": str(tmp_path / "no-such-ca.pem")}
        env.write_config()
        broken = load_settings(env.config).kafka
        before = sender._kafka
        try:
            sender.reconfigure(broken)
        except KafkaException as exc:
            assert "ssl.ca.location" in str(exc)
        else:
            raise AssertionError("librdkafka accepted a CA file that does not exist")
        assert sender._kafka is before
        state.commit_batch(new(50, 100))
        sender.wake()
        send_all(sender, state)  # the old producer still sends
        assert sender.close() == 0
        assert state.stats().delivered_total == 100
    assert len(consume_all(mock_cluster.bootstrap, "mycluster", expected=100, timeout=30)) == 100


def test_a_reader_ahead_of_a_delivering_sender_waits_for_it_instead_of_being_read_back(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60", kafka_toml=SPREAD_BY_KEY)
    payload = b"w" * (_OFFERED_BYTES_WINDOW_FULL * 3 // 4 // 12)
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, window=10)
        thread = SenderThread(sender, structlog.get_logger())
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while not sender.idle():  # it has looked at the (empty) spool once, as at a start
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # Each batch is 3/4 of the bound and more than the window: two never fit together,
            # and the sender takes 10 records at a time.
            for b in range(10):
                batch = state.commit_batch([NewRecord(f"r{b}-{i:02d}", 100 * b + i, payload, "log") for i in range(12)])
                thread.offer(batch.fresh)
            deadline = time.monotonic() + 60
            while state.spool_depth():
                assert time.monotonic() < deadline, f"{state.spool_depth()} records still spooled"
                time.sleep(0.05)
        finally:
            thread.stop()
            thread.join(30)
        assert state.records_read == 0, "the reader ran ahead and the sender read records back"
        assert state.stats().delivered_total == 120
    assert len(consume_all(mock_cluster.bootstrap, "mycluster", expected=120, timeout=30)) == 120


def test_an_offer_does_not_wait_for_a_sender_that_delivers_nothing(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender, batches = stuck_sender(mock_cluster, env, state)
        assert sender.delivering()  # sending began just now
        time.sleep(1.2)
        assert not sender.delivering()  # and nothing came of it
        assert sender.offer(batches[0].fresh, wait=30)
        started = time.monotonic()
        assert not sender.offer(batches[1].fresh, wait=30)  # past the bound: dropped, no wait
        assert time.monotonic() - started < 10
        sender.wake()
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.broker_up(broker_id)
        send_all(sender, state, timeout=60)
        assert sender.close() == 0 and state.stats().delivered_total == 110


def test_the_reports_of_a_trickle_are_settled_in_one_transaction(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reports, "_SETTLE_HOLD_S", 1.0)
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        started = time.monotonic()
        for i in range(3):  # one record at a time, each acknowledged before the next is read
            state.commit_batch(new(i, i + 1))
            sender.wake()
            while len(sender._reports.delivered) < i + 1:
                assert time.monotonic() - started < 30, "no delivery report"
                sender.pump(0.05)
        if time.monotonic() - started < 0.9:  # (a machine slower than that settles sooner)
            assert state.settled == 0 and state.spool_depth() == 3 and sender.counters.delivered == 0
        send_all(sender, state)
        assert state.settled == 1  # the three reports, in one transaction
        assert sender.counters.delivered == 3 and state.stats().delivered_total == 3
        assert sender.close() == 0


def test_the_reports_of_a_bulk_are_settled_in_transactions_of_most_of_the_window(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A settling transaction costs ~1 ms whatever it holds: a bulk's reports are settled once
    # they fill 80 % of the window (a transaction per 500 made `run` ~8 % slower).
    monkeypatch.setattr(reports, "_SETTLE_HOLD_S", 60.0)
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka, window=2000)
        state.commit_batch(new(0, 1600))
        sender.wake()
        deadline = time.monotonic() + 30
        while state.settled == 0:
            assert time.monotonic() < deadline, "the reports were never settled"
            sender.pump(0.05)
        assert state.settled == 1 and state.stats().delivered_total == 1600
        assert sender.close() == 0


@pytest.mark.parametrize("partitioning", ["key", "sticky"])
def test_records_go_to_the_partition_of_their_key_or_stay_on_one_a_while(
    mock_cluster: MockCluster, tmp_path: Path, partitioning: str
) -> None:
    mock_cluster.create_topic("mycluster", 16)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    kafka = dataclasses.replace(load_settings(env.config).kafka, partitioning=partitioning)
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, kafka)
        deadline = time.monotonic() + 30
        while partitioning == "sticky" and sender._partitions.known < 16:
            assert time.monotonic() < deadline, "the topic's partitions were not looked up"
            sender.pump(0.05)
        batches = [(start, start + 50) for start in range(0, 400, 50)]
        for start, stop in batches:  # each batch is produced in one go
            sender.offer(state.commit_batch(new(start, stop)).fresh)
            sender.pump(0)
            time.sleep(0.03)  # longer than sticky.partitioning.linger.ms (twice linger.ms)
        send_all(sender, state)
        assert sender.close() == 0

    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=400, timeout=30)
    assert sorted(m.key() for m in got) == [f"r{i:06d}".encode() for i in range(400)]
    assert all(m.headers() == [("record_id", m.key())] for m in got)
    partition = {m.key(): m.partition() for m in got}
    if partitioning == "key":
        # librdkafka's default partitioner (consistent_random): CRC-32 of the key.
        assert all(p == zlib.crc32(key) % 16 for key, p in partition.items())
    else:
        # A batch on one partition (by their keys, 50 records would be on most of the 16), and
        # the next ones elsewhere once the partition's time is up (all eight batches on the same
        # one by chance: 1 in 16⁷).
        used = [{partition[f"r{i:06d}".encode()] for i in range(start, stop)} for start, stop in batches]
        assert all(len(p) == 1 for p in used)
        assert len(set.union(*used)) > 1


def test_a_sticky_partition_that_is_gone_costs_no_record(mock_cluster: MockCluster, tmp_path: Path) -> None:
    # What a topic made again with fewer partitions looks like: the sender still knows partition
    # 9, the topic has 2. librdkafka refuses it at produce() once it knows the topic, and in the
    # delivery report before: either way the record goes by its key instead, never dead-lettered.
    mock_cluster.create_topic("mycluster", 2)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="poll_interval=60")
    kafka = dataclasses.replace(load_settings(env.config).kafka, partitioning="sticky")
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, kafka)
        for start in (0, 100):  # before librdkafka knows the topic, then after
            sender._partitions._available = [9]
            sender._partitions._looked_at = time.monotonic()  # no look-up due: the stale list holds
            sender.offer(state.commit_batch(new(start, start + 100)).fresh)
            send_all(sender, state)
        assert state.stats().delivered_total == 200
        assert state.stats().deadletter_count == 0 and sender.counters.dead_lettered == 0
        assert sender.close() == 0
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=200, timeout=30)
    assert sorted(m.key() for m in got) == [f"r{i:06d}".encode() for i in range(200)]


# -- the channel: records straight to librdkafka, reports without confluent-kafka's Messages ------

@compiled_only
def test_records_sent_through_the_channel_arrive_with_their_key_header_and_payload(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    records = [NewRecord(f"{i:032x}", 1000 + i, b'{"jobid":%d,"n":"%s"}' % (1000 + i, b"x" * (i % 7)), "log")
               for i in range(3000)]
    with CountingState.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        state.commit_batch(records)
        sender.wake()
        send_all(sender, state)
        assert sender.sending == "channel"
        assert sender.counters.delivered == 3000 and state.stats().delivered_total == 3000
        assert sender.close() == 0
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=3000, timeout=30)
    sent = {r.rid.encode(): r for r in records}
    assert sorted(m.key() for m in got) == sorted(sent)
    for message in got:
        record = sent[message.key()]
        assert message.value() == record.payload
        assert message.headers() == [("record_id", message.key())]


@compiled_only
def test_a_record_the_broker_refuses_through_the_channel_is_dead_lettered_with_the_reason(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        sender.start()
        assert sender.sending == "channel"
        mock_cluster.push_request_errors(PRODUCE, [MSG_SIZE_TOO_LARGE])  # the next request: all of it
        state.commit_batch(new(0, 5))
        sender.wake()
        send_all(sender, state)
        letters = state.dead_letters()
        assert sorted(d.rid for d in letters) == [r.rid for r in new(0, 5)]
        assert all(d.reason == "MSG_SIZE_TOO_LARGE: Broker: Message size too large" for d in letters)
        state.commit_batch(new(5, 10))
        sender.wake()
        send_all(sender, state)
        assert sender.counters.dead_lettered == 5 and sender.counters.delivered == 5
        assert sender.close() == 0
    assert_sent_in_order(mock_cluster, 10, start=5)


@compiled_only
def test_a_full_librdkafka_queue_holds_the_channel_back_and_costs_no_record(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, properties={"queue.buffering.max.messages": "40"})
    with State.open(env.state_dir, synchronous="normal") as state:
        sender = Sender(state, load_settings(env.config).kafka)
        state.commit_batch(new(0, 600))
        sender.wake()
        send_all(sender, state)
        assert sender.sending == "channel"
        assert sender.counters.backpressure_waits > 0 and sender.counters.dead_lettered == 0
        assert sender.close() == 0
    assert_sent_in_order(mock_cluster, 600)


def test_a_refusal_through_the_channel_is_what_produce_raises() -> None:
    full = sendloop.refusal_error((KafkaError._QUEUE_FULL, 0, "Local: Queue full"))
    assert isinstance(full, BufferError) and str(full) == "Local: Queue full"
    large = sendloop.refusal_error((KafkaError.MSG_SIZE_TOO_LARGE, 0, "Broker: Message size too large"))
    assert isinstance(large, KafkaException)
    error = large.args[0]
    assert (error.code(), error.str(), error.fatal()) == (
        KafkaError.MSG_SIZE_TOO_LARGE, "Broker: Message size too large", False)
    fatal = sendloop.refusal_error((KafkaError._FATAL, 1, "Local: Fatal error"))
    assert isinstance(fatal, KafkaException) and fatal.args[0].fatal()


def test_debug_jobcomp_and_a_producer_of_its_own_send_through_produce(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """Each delivery logged as it comes needs confluent-kafka's reports; a Producer whose produce()
    is its own is called, never passed over."""
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    with State.open(env.state_dir, synchronous="normal") as state:
        for sender in (Sender(state, load_settings(env.config).kafka, debug_jobcomp=True),
                       Sender(state, load_settings(env.config).kafka, producer_factory=FatalOnce)):
            sender.start()
            assert sender.sending == "produce()"
            assert sender.close() == 0


@compiled_only
def test_a_channel_librdkafka_refuses_leaves_the_sending_to_produce_with_a_warning(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refused() -> tuple[Any, dict[str, str]]:
        made, properties = sendloop.channel()
        return made, {**properties, sendloop.CHANNEL_PROPERTY: "none"}

    monkeypatch.setattr("jobcompd.producer.channel", refused)
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    with State.open(env.state_dir, synchronous="normal") as state, capture_logs() as logs:
        sender = Sender(state, load_settings(env.config).kafka)
        state.commit_batch(new(0, 50))
        sender.wake()
        send_all(sender, state)
        assert sender.sending == "produce()" and sender.close() == 0
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == [
        "sending through confluent-kafka's produce(): the channel's plugin was refused"]
    assert_sent_in_order(mock_cluster, 50)


def test_a_sender_with_a_rebuild_due_is_not_idle_until_it_has_rebuilt(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    """The reports of a fatal error can all be in (nothing left in flight) before the producer is
    rebuilt: the rebuild sends the spool again, so until it has, the sender is not done
    (``replay`` would stop with records spooled)."""
    mock_cluster.create_topic("mycluster", 1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    with State.open(env.state_dir, synchronous="normal") as state, capture_logs():
        sender = Sender(state, load_settings(env.config).kafka)
        sender.start()
        send_all(sender, state)
        assert sender.idle()
        sender._on_error(KafkaError(KafkaError._FATAL, "Local: Fatal error", fatal=True))  # as librdkafka calls it
        assert not sender.idle()
        sender.pump(0)  # rebuilds
        assert sender.idle() and sender.close() == 0
