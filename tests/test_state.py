"""Tests for jobcompd.state on real SQLite files: atomic batches, crash safety, operator views."""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import os
import random
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobcompd.identity import Position
from jobcompd.state import (
    DB_NAME,
    SCHEMA_VERSION,
    BatchResult,
    Delivery,
    NewRecord,
    QuarantinedLine,
    SpooledRecord,
    State,
    StateError,
    _codec,
)
from jobcompd.state._flush import FLUSH_LAG_RECORDS
from jobcompd.state._spool import UNSYNCED_REPORTS
from tests.jobcompd_env import mounted_tmpfs

ROOT = Path(__file__).resolve().parent.parent
LOG = "/var/log/slurm/jobcomp.log"


def records(start: int, stop: int, *, size: int = 40, source: str = "log") -> list[NewRecord]:
    """Records ``start`` to ``stop``, each padded with ``size`` bytes that do not compress (the
    spool compresses a batch's payloads: a test of its size needs bytes that stay that size)."""
    return [
        NewRecord(f"r{i:09d}", i, b'{"jobid":%d,"pad":"%s"}' % (i, _noise(i, size)), source)
        for i in range(start, stop)
    ]


def _noise(seed: int, size: int) -> bytes:
    return hashlib.shake_128(b"%d" % seed).hexdigest((size + 1) // 2)[:size].encode()


def at(offset: int, source: str = "log") -> Position:
    return Position(source, LOG, "fp-" + source, offset, offset, inode=42, dev=7)


def listing(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def all_rids(state: State) -> list[str]:
    return [r.rid for r in state.pending(limit=10**9)]


def seq_of(state: State, rid: str) -> int:
    """The spool (or dead-letter) seq of record ``rid``."""
    for held in [*state.pending(limit=10**9), *state.dead_letters()]:
        if held.rid == rid:
            return held.seq
    raise AssertionError(f"{rid} is not held")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def state(state_dir: Path) -> Iterator[State]:
    with State.open(state_dir) as s:
        yield s


# -- batches -------------------------------------------------------------------------------------


def test_commit_batch_spools_records_and_moves_position(state: State) -> None:
    result = state.commit_batch(records(0, 5), position=at(5))

    assert result == BatchResult(spooled=5, already_known=0, quarantined=0)
    assert [r.payload for r in result.fresh] == [r.payload for r in records(0, 5)]
    assert result.fresh_bytes == sum(len(r.payload) for r in records(0, 5))
    assert state.position("log") == at(5)
    assert state.position("other") is None
    assert state.spool_depth() == 5
    got = state.pending()
    assert [r.rid for r in got] == [r.rid for r in records(0, 5)]
    assert got[0].payload == records(0, 1)[0].payload
    assert got[0].attempts == 0 and got[0].last_error is None
    assert state.oldest_pending_at() == pytest.approx(time.time(), abs=5)


def test_a_batch_result_counts_the_payload_bytes_of_its_fresh_records_only(state: State) -> None:
    state.commit_batch(records(0, 5))
    again = state.commit_batch(records(3, 8))
    assert [r.rid for r in again.fresh] == [r.rid for r in records(5, 8)]
    assert again.fresh_bytes == sum(len(r.payload) for r in records(5, 8))
    assert state.commit_batch(records(0, 8)).fresh_bytes == 0


class _Exploding(list[QuarantinedLine]):
    def __iter__(self) -> Iterator[QuarantinedLine]:
        yield QuarantinedLine("log", 1, 0, b"bad", "unparsable")
        raise RuntimeError("reader died mid-batch")


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param(
            {"records": records(10, 20) + [NewRecord("r-bad", 99, "not bytes")]},  # type: ignore[arg-type]
            id="payload-not-bytes",
        ),
        pytest.param(
            {"quarantined": [QuarantinedLine("log", 3, 9, "str", "not json")]},  # type: ignore[arg-type]
            id="raw-not-bytes",
        ),
        pytest.param({"position": at(-1)}, id="negative-offset"),
        pytest.param(
            {"quarantined": _Exploding([QuarantinedLine("log", 1, 0, b"?", "bad")])},
            id="python-exception",
        ),
    ],
)
def test_a_failing_batch_leaves_neither_records_nor_position(
    state: State, batch: dict[str, object]
) -> None:
    state.commit_batch(records(0, 10), position=at(10))
    before = state.stats()
    args: dict[str, object] = {"records": records(10, 20), "position": at(20)}
    args.update(batch)

    with pytest.raises((StateError, RuntimeError)) as failure:
        state.commit_batch(**args)  # type: ignore[arg-type]

    if isinstance(failure.value, StateError):
        assert not failure.value.transient
    assert state.position("log") == at(10)
    assert all_rids(state) == [r.rid for r in records(0, 10)]
    assert state.quarantined() == []
    assert dataclasses.replace(state.stats(), db_bytes=0) == dataclasses.replace(before, db_bytes=0)
    assert state.commit_batch(records(10, 20), position=at(20)).spooled == 10


def test_records_already_spooled_dead_lettered_or_delivered_are_skipped(state: State) -> None:
    state.commit_batch(records(0, 4))
    state.mark_delivered([Delivery(seq_of(state, "r000000000"))])
    state.dead_letter(seq_of(state, "r000000001"), "too large")

    again = records(0, 4) + records(4, 6) + records(5, 6)
    # What a reader asks before the commit (to send the new ones early): the same ones, but for
    # a record repeated within the batch, which only the commit sees.
    assert state.known_among([r.rid for r in again], [r.jobid for r in again]) == {0, 1, 2, 3}
    assert state.known_among([], []) == set()
    fresh = again[4:]
    assert state.new_among([r.rid for r in again], [r.jobid for r in again], [r.payload for r in again]) == (
        [r.rid for r in fresh], [r.jobid for r in fresh], [r.payload for r in fresh])
    result = state.commit_batch(again, position=at(6))

    assert result == BatchResult(spooled=2, already_known=5, quarantined=0)
    assert all_rids(state) == ["r000000002", "r000000003", "r000000004", "r000000005"]
    assert [d.rid for d in state.dead_letters()] == ["r000000001"]
    assert state.stats().already_known_total == 5
    assert all(state.is_known(f"r{i:09d}", i) for i in range(6))
    assert not state.is_known("r000000006", 6)


@given(
    known=st.sets(st.integers(0, 11), max_size=6),
    acked=st.sets(st.integers(0, 12), max_size=13),
)
@settings(max_examples=60, deadline=None)
def test_records_kafka_acknowledged_before_the_commit_are_known_and_delivered_never_spooled(
    tmp_path_factory: pytest.TempPathFactory, known: set[int], acked: set[int]
) -> None:
    """``commit_batch(delivered=…)``: of a batch sent before its commit, the records Kafka
    acknowledged are made known and counted delivered (the last of them the last delivered job),
    the others spooled; records known already are skipped whether acknowledged or not."""
    with State.open(tmp_path_factory.mktemp("state")) as state:
        earlier = [records(i, i + 1)[0] for i in sorted(known)]
        state.commit_batch(earlier)
        batch = records(0, 12) + records(3, 4)  # record 3 twice: the commit sees it
        result = state.commit_batch(batch, position=at(13), delivered=sorted(acked))

        new_ones = set(range(12)) - known
        done = {batch[i].jobid for i in acked} & new_ones  # (index 12: record 3 again)
        assert result.spooled == len(new_ones) and result.already_known == len(batch) - len(new_ones)
        assert [r.rid for r in result.fresh] == [batch[i].rid for i in sorted(new_ones - done)]
        assert sorted(all_rids(state)) == sorted(
            [r.rid for r in earlier] + [batch[i].rid for i in new_ones - done])
        stats = state.stats()
        assert stats.delivered_total == len(done)
        assert stats.spooled_total == len(earlier) + len(new_ones)
        assert stats.last_delivered_jobid == (max(done) if done else None)
        assert all(state.is_known(r.rid, r.jobid) for r in batch)
        assert state.position("log") == at(13)


@pytest.mark.parametrize(
    "ids",
    [
        ["a" * 32, "b" * 32, "c" * 32],  # of one width, as jobcompd's own: the ids end to end
        ["a", "bbb", "cc"],  # of several widths: [rid, jobid] pairs
        ["aa", "b", "ccc"],  # as many bytes as if all were of the first one's width
        ["aé", "bé", "cé"],  # of one width in characters, not in bytes
    ],
)
def test_record_ids_of_any_shape_are_made_known_and_found_again(state: State, ids: list[str]) -> None:
    batch = [NewRecord(rid, i, b"{}", "log") for i, rid in enumerate(ids)]
    assert state.commit_batch(batch[:2]).spooled == 2
    assert state.known_among(ids, [0, 1, 2]) == {0, 1}
    assert state.known_among(ids, [7, 1, 2]) == {1}  # a record id is known with its job id
    # One record alone (a trickle's, most often) is looked up by its key instead.
    assert [state.known_among([rid], [i]) for i, rid in enumerate(ids)] == [{0}, {0}, set()]
    assert state.known_among(ids[:1], [7]) == set()
    for bad_rids, bad_jobids in (([b"x"], [0]), (["x"], [1 << 63]), ([b"x", "y"], [0, 1])):
        with pytest.raises(StateError, match="a value was rejected") as refused:
            state.known_among(bad_rids, bad_jobids)  # type: ignore[arg-type]
        assert refused.value.rejected
    assert state.commit_batch(batch) == BatchResult(spooled=1, already_known=2, quarantined=0)
    assert [r.rid for r in state.pending()] == ids
    assert all(state.is_known(rid, i) for i, rid in enumerate(ids))
    assert not state.is_known(ids[0], 1)


def test_pending_is_in_seq_order_and_pages_with_after_seq(state: State) -> None:
    for start in range(0, 30, 10):
        state.commit_batch(records(start, start + 10), position=at(start + 10))

    first = state.pending(limit=12)
    rest = state.pending(after_seq=first[-1].seq, limit=100)

    assert [r.jobid for r in first + rest] == list(range(30))
    seqs = [r.seq for r in first + rest]
    assert seqs == sorted(seqs) and len(set(seqs)) == 30
    assert state.pending(after_seq=rest[-1].seq) == []


def test_pages_of_the_spool_carry_each_record_s_own_payload(state: State) -> None:
    # Payloads of different sizes, rows of 40, read in pages that start and end inside rows (a
    # page reads only its records' bytes of a row), some settled in the middle of a row.
    spooled: dict[int, bytes] = {}
    for start in range(0, 120, 40):
        batch = [
            NewRecord(r.rid, r.jobid, r.payload + b"y" * (r.jobid * 7 % 23), r.source)
            for r in records(start, start + 40)
        ]
        spooled.update((r.jobid, r.payload) for r in batch)
        state.commit_batch(batch, position=at(start + 40))
    settle = [r for r in state.pending(limit=10**9) if r.jobid in (45, 46, 70)]
    state.mark_delivered([Delivery(r.seq, r.jobid) for r in settle])

    read: list[SpooledRecord] = []
    while page := state.pending(after_seq=read[-1].seq if read else 0, limit=13):
        read += page

    expected = [jobid for jobid in range(120) if jobid not in (45, 46, 70)]
    assert [r.jobid for r in read] == expected
    assert all(r.payload == spooled[r.jobid] for r in read)


def test_pages_of_whole_rows_decompress_a_row_once_a_page(state: State, monkeypatch: pytest.MonkeyPatch) -> None:
    # Rows of 40 (a row's payloads are one compressed frame), one record settled in the middle of
    # the second: pages of whole rows, until they hold the 13 asked for, each row read once a page.
    for start in range(0, 120, 40):
        state.commit_batch(records(start, start + 40), position=at(start + 40))
    state.mark_delivered([Delivery(r.seq, r.jobid) for r in state.pending(limit=10**9) if r.jobid == 50])
    reads: list[int] = []
    read = _codec.read

    def counted(blob: Any, codec: int, start: int, end: int, total: int) -> bytes:
        reads.append(total)
        return read(blob, codec, start, end, total)

    monkeypatch.setattr(_codec, "read", counted)

    pages = [state.pending(limit=13, whole_rows=True)]
    pages.append(state.pending(after_seq=pages[0][5].seq, limit=13, whole_rows=True))  # inside a row
    while page := state.pending(after_seq=pages[-1][-1].seq, limit=50, whole_rows=True):
        pages.append(page)

    assert [[r.jobid for r in page] for page in pages] == [
        list(range(40)),
        list(range(6, 40)),
        [*range(40, 50), *range(51, 120)],  # two rows: the first holds fewer than 50
    ]
    assert all(r.payload == records(r.jobid, r.jobid + 1)[0].payload for page in pages for r in page)
    assert len(reads) == 4  # the first row twice (two pages begin in it), the others once
    assert state.pending(limit=13) == pages[0][:13]  # without whole_rows: the limit, exactly


# -- deliveries ----------------------------------------------------------------------------------


def test_mark_delivered_takes_records_out_of_the_spool_and_keeps_their_ids(state: State) -> None:
    state.commit_batch(records(0, 5), position=at(5))
    spooled = state.pending()

    removed = state.mark_delivered(
        [Delivery(r.seq) for r in spooled[:3]] + [Delivery(10**6)]
    )

    assert removed == 3
    assert all_rids(state) == ["r000000003", "r000000004"]
    assert all(state.is_known(r.rid, r.jobid) for r in spooled)
    assert state.mark_delivered([Delivery(spooled[0].seq)]) == 0
    stats = state.stats()
    assert stats.delivered_total == 3
    assert stats.last_delivered_jobid == 2
    assert stats.last_delivered_at == pytest.approx(time.time(), abs=5)
    assert stats.spool_depth == 2
    assert state.commit_batch(records(0, 5)) == BatchResult(spooled=0, already_known=5, quarantined=0)


def test_reports_in_any_order_settle_exactly_their_records(state: State) -> None:
    state.commit_batch(records(0, 10))
    seqs = [r.seq for r in state.pending()]
    delivered = [seqs[i] for i in (7, 0, 2, 1, 5, 9, 2)]  # out of order, one report twice

    assert state.mark_delivered([Delivery(seq) for seq in delivered]) == 6

    assert all_rids(state) == [f"r{i:09d}" for i in (3, 4, 6, 8)]
    assert state.stats().delivered_total == 6


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=4),
    chunks=st.lists(st.lists(st.integers(-3, 170), max_size=60), max_size=8),
    runs=st.lists(st.tuples(st.integers(0, 170), st.integers(1, 50)), max_size=4),
)
def test_reports_settle_in_runs_or_one_by_one_as_a_model_says(
    tmp_path_factory: pytest.TempPathFactory, sizes: list[int], chunks: list[list[int]],
    runs: list[tuple[int, int]],
) -> None:
    # Runs of seqs are settled at once (a partition's reports), anything else one by one: reports
    # twice, out of order, of unknown seqs, across batches, mixed with runs.
    with State.open(tmp_path_factory.mktemp("state")) as state:
        start = 0
        for size in sizes:
            state.commit_batch(records(start, start + size))
            start += size
        seqs = [r.seq for r in state.pending(limit=10**9)]
        waiting = set(seqs)
        reports = [[seqs[0] + i for i in chunk] for chunk in chunks]
        reports += [list(range(seqs[0] + first, seqs[0] + first + length)) for first, length in runs]
        delivered = 0
        for chunk in reports:
            newly = waiting & set(chunk)
            assert state.mark_delivered([Delivery(seq) for seq in chunk]) == len(newly)
            waiting -= newly
            delivered += len(newly)
            assert sorted(r.seq for r in state.pending(limit=10**9)) == sorted(waiting)
            assert state.stats().delivered_total == delivered
        with sqlite3.connect(state.path) as raw:
            left = raw.execute("SELECT first_seq, count FROM spool").fetchall()
        raw.close()
        # A batch's row stays while, and only while, one of its records waits.
        assert {first for first, count in left} == {
            first for first, count in left if waiting & set(range(first, first + count))
        }
        assert sum(count for _, count in left) == sum(
            size for size, first in zip(sizes, [seqs[sum(sizes[:i])] for i in range(len(sizes))], strict=True)
            if waiting & set(range(first, first + size))
        )


def test_a_delivery_report_resolves_a_dead_letter(state: State) -> None:
    state.commit_batch(records(0, 2))
    state.dead_letter(seq_of(state, "r000000000"), "gave up after timeouts")

    assert state.mark_delivered([Delivery(seq_of(state, "r000000000"))]) == 1

    assert state.dead_letters() == []
    assert state.stats().delivered_total == 1
    assert state.commit_batch(records(0, 1)).already_known == 1


def test_the_last_delivered_job_is_the_same_whether_the_sender_names_it_or_not(tmp_path: Path) -> None:
    def last_jobid(named: bool) -> list[int | None]:
        seen = []
        with State.open(tmp_path / str(named)) as s:
            s.commit_batch(records(0, 6))
            s.dead_letter(seq_of(s, "r000000005"), "refused")
            pending = {r.rid: r for r in s.pending()}
            held = {d.rid: d.seq for d in s.dead_letters()}
            for reports in (["r000000001", "r000000003"], ["r000000000", "r000000003"], ["r000000005"]):
                seqs = [pending[rid].seq if rid in pending else held[rid] for rid in reports]
                jobids = [int(rid[1:]) if named else None for rid in reports]
                s.mark_delivered([Delivery(q, j) for q, j in zip(seqs, jobids, strict=True)])
                seen.append(s.stats().last_delivered_jobid)
        return seen

    # The last report of a batch that was still waiting (or dead-lettered) names the job.
    assert last_jobid(named=True) == last_jobid(named=False) == [3, 0, 5]


class SlowDisk:
    """The flusher's ``fdatasync``, held at a gate (a disk that stalls a flush) or failing; it
    notes the file of every flush that went through and the thread that asked."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.gate.set()
        self.error: OSError | None = None
        self.flushed: list[tuple[str, str]] = []
        self.waiting = threading.Event()  # a flush is held at the gate
        self.failed = threading.Event()  # a flush failed

    def __call__(self, fd: int) -> None:
        if not self.gate.is_set():
            self.waiting.set()
            self.gate.wait()
        if self.error is not None:
            self.failed.set()
            raise self.error
        os.fdatasync(fd)
        self.flushed.append((os.readlink(f"/proc/self/fd/{fd}"), threading.current_thread().name))

    def holds(self, call: Callable[[], object], *, for_s: float) -> None:
        """Run ``call`` on a thread of its own: it still waits after ``for_s`` seconds, and ends
        once the gate opens."""
        done = threading.Event()
        worker = threading.Thread(target=lambda: (call(), done.set()))
        worker.start()
        assert not done.wait(for_s)
        self.gate.set()
        assert done.wait(10)
        worker.join()

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.flushed) < count:
            assert time.monotonic() < deadline, f"{len(self.flushed)} flushes, not {count}"
            time.sleep(0.005)


def slow_disk(s: State) -> SlowDisk:
    assert s._flusher is not None
    disk = SlowDisk()
    s._flusher.sync = disk
    return disk


@contextmanager
def state_busy(state: State, hold_s: float = 30) -> Iterator[threading.Event]:
    """Another thread has ``state`` (as the reader's does while it commits a batch) until the event
    yielded is set, or ``hold_s`` pass."""
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with state._lock:
            held.set()
            release.wait(hold_s)

    holder = threading.Thread(target=hold)
    holder.start()
    assert held.wait(10)
    try:
        yield release
    finally:
        release.set()
        holder.join()


def test_settling_without_waiting_leaves_a_busy_state_alone(tmp_path: Path) -> None:
    """``mark_delivered(wait=False)`` does nothing while another thread has the state (a commit on
    the reader's thread): it says so, and settles once the state is free."""
    with State.open(tmp_path, synchronous="normal") as s:
        s.commit_batch(records(0, 3))
        deliveries = [Delivery(r.seq, r.jobid) for r in s.pending()]
        with state_busy(s):
            assert s.mark_delivered(deliveries, wait=False) is None
        assert s.spool_depth() == 3 and s.stats().delivered_total == 0
        assert s.mark_delivered(deliveries, wait=False) == 3
        assert s.spool_depth() == 0 and s.stats().delivered_total == 3


def test_with_synchronous_full_a_thread_of_its_own_flushes_the_log_after_each_batch(tmp_path: Path) -> None:
    """The commit writes the write-ahead log (synchronous = NORMAL), the flusher's thread flushes
    it; a settlement of delivery reports asks for no flush (the next one carries it)."""
    with State.open(tmp_path / "full") as s:
        disk = slow_disk(s)
        s.commit_batch(records(0, 3))
        disk.wait_for(1)
        assert disk.flushed == [(str(s.path) + "-wal", "jobcompd-flush")]
        with s._reading("test") as db:
            assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        s.mark_delivered([Delivery(r.seq, r.jobid) for r in s.pending()])
        assert s._unflushed_reports == 3
        time.sleep(0.05)
        assert len(disk.flushed) == 1
        s.commit_batch(records(3, 4), position=at(10))
        disk.wait_for(2)
        deadline = time.monotonic() + 10
        while s._unflushed_reports:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        assert s.stats().delivered_total == 3
    with State.open(tmp_path / "normal", synchronous="normal") as s:
        assert s._flusher is None
        s.commit_batch(records(0, 3))
        s.mark_delivered([Delivery(r.seq) for r in s.pending()])
        assert s.stats().delivered_total == 3


def test_a_stalled_flush_holds_the_reader_back_only_past_the_lag_bound(tmp_path: Path) -> None:
    """While the disk takes its time to flush, batches are committed (and their records can be
    read and settled) until the records not flushed would pass FLUSH_LAG_RECORDS; the next batch
    waits for the flush, and goes once it is done."""
    with State.open(tmp_path / "full") as s:
        disk = slow_disk(s)
        disk.gate.clear()
        s.commit_batch(records(0, 1000))
        assert disk.waiting.wait(10)
        for start in range(1000, FLUSH_LAG_RECORDS, 1000):
            t = time.monotonic()
            s.commit_batch(records(start, start + 1000))
            assert time.monotonic() - t < 1.0
        assert len(s.pending(limit=10**9)) == FLUSH_LAG_RECORDS
        s.mark_delivered([Delivery(r.seq, r.jobid) for r in s.pending(limit=10)])
        assert disk.flushed == []
        # One record more than the bound: it waits for the flush.
        disk.holds(lambda: s.commit_batch(records(10**6, 10**6 + 1)), for_s=0.3)
        assert s.is_known("r001000000", 10**6)
        disk.wait_for(2)


def test_a_flush_that_does_not_end_stops_the_reading_within_flush_lag_s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """However slowly lines come, a disk that no longer flushes stops the next batch once the
    oldest commit not flushed has waited FLUSH_LAG_S (the daemon's health report then goes stale,
    as it did when the commit itself waited), not only after FLUSH_LAG_RECORDS records."""
    monkeypatch.setattr("jobcompd.state._flush.FLUSH_LAG_S", 1.0)
    with State.open(tmp_path / "full") as s:
        disk = slow_disk(s)
        disk.gate.clear()
        s.commit_batch(records(0, 1))
        first = time.monotonic()
        assert disk.waiting.wait(10)
        s.commit_batch(records(1, 2))  # a moment later: it goes
        time.sleep(max(0.0, first + 1.2 - time.monotonic()))
        disk.holds(lambda: s.commit_batch(records(2, 3)), for_s=0.5)
        assert s.is_known("r000000002", 2)


def test_settlements_wait_for_a_flush_once_unsynced_reports_pile_up(tmp_path: Path) -> None:
    """Draining a backlog with no new lines: once UNSYNCED_REPORTS settled records are not flushed,
    the next settlement waits for a flush first, so a power cut repeats a bounded number."""
    with State.open(tmp_path / "drain") as s:
        disk = slow_disk(s)
        s.commit_batch(records(0, UNSYNCED_REPORTS + 10))
        disk.wait_for(1)
        waiting = s.pending(limit=10**9)

        def settle(part: list[SpooledRecord]) -> None:
            s.mark_delivered([Delivery(r.seq, r.jobid) for r in part])

        settle(waiting[: UNSYNCED_REPORTS - 1])
        settle(waiting[UNSYNCED_REPORTS - 1 : -5])
        assert s._unflushed_reports == UNSYNCED_REPORTS + 5  # nothing asked for a flush yet
        assert len(disk.flushed) == 1
        settle(waiting[-5:-3])  # flushed first, then settled
        assert len(disk.flushed) == 2
        assert s._unflushed_reports == 2
        settle(waiting[-3:])
        assert len(disk.flushed) == 2
        assert s.stats().delivered_total == UNSYNCED_REPORTS + 10


def test_a_failed_flush_refuses_the_next_batch_until_a_flush_succeeds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A flush that fails (EIO) is not taken for done: the next batch is refused with the reason,
    changing nothing, and the flusher tries again until the disk takes it."""
    monkeypatch.setattr("jobcompd.state._flush._RETRY_S", 0.05)
    with State.open(tmp_path / "full") as s:
        disk = slow_disk(s)
        disk.error = OSError(errno.EIO, os.strerror(errno.EIO))
        s.commit_batch(records(0, 2), position=at(100))
        assert disk.failed.wait(10)
        # The flusher notes a failure after the flush raised it, then tries again: once a second
        # try has failed, the first is noted (waiting for the first alone raced with that).
        disk.failed.clear()
        assert disk.failed.wait(10)
        with pytest.raises(StateError) as refused:
            s.commit_batch(records(2, 3), position=at(200))
        assert refused.value.transient
        assert "cannot flush the write-ahead log to disk: Input/output error" in refused.value.reason
        assert "free space on" in refused.value.recovery
        assert not s.is_known("r000000002", 2)
        disk.error = None
        disk.wait_for(1)
        result = s.commit_batch(records(2, 3), position=at(200))
        assert result.spooled == 1
        position = s.position("log")
        assert position is not None and position.offset == 200


def test_closing_waits_for_the_flush_of_what_was_committed(tmp_path: Path) -> None:
    with State.open(tmp_path / "full") as s:
        disk = slow_disk(s)
        disk.gate.clear()
        s.commit_batch(records(0, 2))
        assert disk.waiting.wait(10)
        s.commit_batch(records(2, 4))  # asks for a second flush, after the held one
        disk.holds(s.close, for_s=0.3)
        assert len(disk.flushed) == 2


def test_the_flusher_copies_the_log_into_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints run on the flusher's thread (SQLite's own only past a backstop of 64 MiB)."""
    monkeypatch.setattr("jobcompd.state._flush._CHECKPOINT_EVERY_S", 0.0)
    with State.open(tmp_path / "full") as s:
        with s._reading("test") as db:
            assert db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 4096
        size = s.path.stat().st_size
        s.commit_batch(records(0, 200, size=2000))
        deadline = time.monotonic() + 10
        while s.path.stat().st_size <= size:
            assert time.monotonic() < deadline, "the log was never copied into the database"
            time.sleep(0.01)


def test_a_new_state_has_16_kib_pages(tmp_path: Path) -> None:
    with State.open(tmp_path / "new") as s, s._reading("test") as db:
        assert db.execute("PRAGMA page_size").fetchone()[0] == 16384


def test_prune_delivered_forgets_old_ids_and_counts_them(state: State) -> None:
    state.commit_batch(records(0, 3))
    state.mark_delivered([Delivery(r.seq) for r in state.pending()])
    time.sleep(0.01)
    state.commit_batch(records(3, 6))  # still spooled: their ids are kept
    state.dead_letter(seq_of(state, "r000000005"), "refused")  # dead-lettered: kept too

    assert state.prune_delivered(time.time() - 3600) == 0
    assert state.prune_delivered(time.time() + 1) == 3

    assert not state.is_known("r000000000", 0)
    assert all(state.is_known(f"r{i:09d}", i) for i in range(3, 6))
    assert state.commit_batch(records(3, 6)).already_known == 3
    assert state.stats().pruned_total == 3


def test_prune_in_steps_forgets_the_oldest_jobs_first(state: State) -> None:
    state.commit_batch(records(0, 25))
    state.mark_delivered([Delivery(r.seq) for r in state.pending()])
    state.commit_batch(records(25, 27))  # still spooled: kept whatever the steps
    later = time.time() + 1
    assert state.prune_delivered(later, limit=10) == 10
    assert not state.is_known("r000000009", 9) and state.is_known("r000000010", 10)
    assert [state.prune_delivered(later, limit=10) for _ in range(3)] == [10, 5, 0]
    assert all(state.is_known(f"r{i:09d}", i) for i in (25, 26))
    assert state.stats().pruned_total == 25


def test_record_attempt_keeps_the_record_with_its_error(state: State) -> None:
    state.commit_batch(records(0, 2))

    state.record_attempt(seq_of(state, "r000000001"), "Local: Message timed out")
    state.record_attempt(seq_of(state, "r000000001"), "Broker: Not enough in-sync replicas")
    state.record_attempt(10**6, "ignored")

    first, second = state.pending()
    assert (first.attempts, first.last_error) == (0, None)
    assert (second.attempts, second.last_error) == (2, "Broker: Not enough in-sync replicas")


# -- dead letters and quarantine -----------------------------------------------------------------


def test_dead_letters_can_be_retried_and_purged_never_silently(state: State) -> None:
    state.commit_batch(records(0, 4))
    state.record_attempt(seq_of(state, "r000000001"), "Broker: Message size too large")

    assert state.dead_letter(seq_of(state, "r000000001"), "Broker: Message size too large")
    assert state.dead_letter(seq_of(state, "r000000002"), "schema rejected")
    assert not state.dead_letter(seq_of(state, "r000000001"), "already moved")
    with pytest.raises(StateError):
        state.dead_letter(seq_of(state, "r000000003"), "")

    letters = state.dead_letters()
    assert [(d.rid, d.reason, d.attempts) for d in letters] == [
        ("r000000001", "Broker: Message size too large", 1),
        ("r000000002", "schema rejected", 0),
    ]
    assert letters[0].payload == records(1, 2)[0].payload
    assert state.dead_letters(limit=1) == letters[:1]
    assert all_rids(state) == ["r000000000", "r000000003"]

    assert state.retry_dead_letters(["r000000002", "nope"]) == 1
    back = state.pending()[-1]
    assert back.rid == "r000000002"
    assert back.seq > max(r.seq for r in state.pending()[:-1])
    assert back.last_error == "schema rejected"

    assert state.purge_dead_letters() == 1
    assert state.dead_letters() == []
    stats = state.stats()
    assert stats.deadlettered_total == 2
    assert stats.retried_total == 1
    assert stats.purged_total == 1
    assert stats.deadletter_count == 0


def test_retry_all_dead_letters_keeps_their_order(state: State) -> None:
    state.commit_batch(records(0, 5))
    moved = state.dead_letter_many(
        {seq_of(state, rid): reason for rid, reason in (("r000000003", "x"), ("r000000001", "y"), ("r000000004", "z"))}
    )
    assert moved == 3

    assert state.retry_dead_letters() == 3

    assert all_rids(state) == [f"r{i:09d}" for i in (0, 2, 1, 3, 4)]


def test_quarantined_lines_are_kept_with_their_reason(state: State) -> None:
    bad = [
        QuarantinedLine("log", 7, 812, b"JobId=12 UserId=\xff", "invalid utf-8"),
        QuarantinedLine("log", 9, 1020, b"garbage", "no JobId"),
    ]

    result = state.commit_batch(records(0, 1), position=at(2000), quarantined=bad)

    assert result == BatchResult(spooled=1, already_known=0, quarantined=2)
    kept = state.quarantined()
    assert kept == bad
    assert all(q.at == pytest.approx(time.time(), abs=5) for q in kept)
    assert state.quarantined(limit=1) == bad[:1]
    assert state.stats().quarantine_count == 2
    assert state.stats().quarantined_total == 2


# -- positions -----------------------------------------------------------------------------------


def test_positions_are_upserted_per_source(state: State) -> None:
    huge = Position("b", "/rotated", "fp", 10, 1, inode=2**64 - 1, dev=2**63)
    state.commit_batch([], position=at(100, "a"))
    state.commit_batch([], position=huge)
    state.commit_batch([], position=at(250, "a"))

    assert state.positions() == [at(250, "a"), huge]
    assert state.position("b") == huge
    assert state.position("a").updated_at == pytest.approx(time.time(), abs=5)  # type: ignore[union-attr]
    assert state.forget_position("b")
    assert not state.forget_position("b")
    assert state.positions() == [at(250, "a")]


# -- files, reopening, read-only -----------------------------------------------------------------


def test_files_are_private(tmp_path: Path) -> None:
    directory = tmp_path / "deep" / "state"
    old = os.umask(0)
    try:
        with State.open(directory) as s:
            s.commit_batch(records(0, 1))
            assert mode(directory) == 0o700
            for name in (DB_NAME, DB_NAME + "-wal", DB_NAME + "-shm"):
                assert mode(directory / name) == 0o600, name
    finally:
        os.umask(old)


def test_reopen_after_close_keeps_everything(state_dir: Path) -> None:
    with State.open(state_dir) as s:
        s.commit_batch(
            records(0, 6),
            position=at(6),
            quarantined=[QuarantinedLine("log", 3, 30, b"?", "bad")],
        )
        s.mark_delivered([Delivery(seq_of(s, "r000000000"))])
        s.dead_letter(seq_of(s, "r000000001"), "too big")
        s.record_attempt(seq_of(s, "r000000002"), "timeout")
        before = (s.pending(), s.dead_letters(), s.quarantined(), s.positions())

    with State.open(state_dir, synchronous="normal") as s:
        assert (s.pending(), s.dead_letters(), s.quarantined(), s.positions()) == before
        assert s.is_known("r000000000", 0)
        assert s.stats().delivered_total == 1


def test_closed_state_refuses_calls(state: State) -> None:
    state.close()
    state.close()
    with pytest.raises(StateError, match="closed"):
        state.spool_depth()


def test_readonly_open_of_a_missing_state_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StateError) as failure:
        State.open(tmp_path / "nothing-here", readonly=True)

    assert str(tmp_path / "nothing-here" / DB_NAME) in str(failure.value)
    assert list(tmp_path.iterdir()) == []


def test_readonly_open_creates_nothing_and_refuses_writes(state_dir: Path) -> None:
    with State.open(state_dir) as s:
        s.commit_batch(records(0, 3), position=at(3))
    before = listing(state_dir)

    with State.open(state_dir, readonly=True) as ro:
        assert ro.spool_depth() == 3
        assert ro.position("log") == at(3)
        assert ro.stats().spooled_total == 3
        for write in (
            lambda: ro.commit_batch(records(3, 4), position=at(4)),
            lambda: ro.mark_delivered([Delivery(1)]),
            lambda: ro.dead_letter(1, "x"),
            lambda: ro.purge_dead_letters(),
            lambda: ro.prune_delivered(time.time()),
        ):
            with pytest.raises(StateError, match="read-only"):
                write()

    assert listing(state_dir) == before


def test_readonly_open_sees_a_running_writer(state: State) -> None:
    state.commit_batch(records(0, 2), position=at(2))

    with State.open(state.path.parent, readonly=True) as ro:
        assert ro.spool_depth() == 2
        state.commit_batch(records(2, 3), position=at(3))
        assert ro.position("log") == at(3)


def test_bad_synchronous_setting_is_refused(state_dir: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        State.open(state_dir, synchronous="off")


# -- damaged, foreign and future files -----------------------------------------------------------


def assert_refused(state_dir: Path, *, readonly: bool = False) -> StateError:
    before = listing(state_dir)
    with pytest.raises(StateError) as failure:
        State.open(state_dir, readonly=readonly)
    assert str(state_dir / DB_NAME) in str(failure.value)
    assert listing(state_dir) == before, "a refused file must be left exactly as it was"
    return failure.value


def test_a_garbage_file_is_refused_with_the_recovery_path(state_dir: Path) -> None:
    with State.open(state_dir) as s:
        s.commit_batch(records(0, 3), position=at(3))
    (state_dir / DB_NAME).write_bytes(b"this is not sqlite at all\n" * 400)

    error = assert_refused(state_dir)

    assert ".recover" in error.recovery and "jobcompd replay" in error.recovery
    assert not error.transient
    assert_refused(state_dir, readonly=True)


def test_an_empty_database_file_is_refused_not_taken_for_a_new_state(state_dir: Path) -> None:
    # Taking it for a new state would read the whole log again and send every record twice.
    with State.open(state_dir) as s:
        s.commit_batch(records(0, 3), position=at(3))
    db = state_dir / DB_NAME
    for suffix in ("-wal", "-shm"):
        db.with_name(DB_NAME + suffix).unlink(missing_ok=True)
    db.write_bytes(b"")

    error = assert_refused(state_dir)

    assert "empty" in error.reason and ".recover" in error.recovery
    assert db.stat().st_size == 0  # left as it was found


def test_an_open_state_directory_is_made_private(state_dir: Path) -> None:
    with State.open(state_dir):
        pass
    os.chmod(state_dir, 0o755)
    with State.open(state_dir):
        assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700


def test_a_checkpoint_truncates_the_write_ahead_log(state_dir: Path) -> None:
    with State.open(state_dir, synchronous="normal") as s:
        s.commit_batch(records(0, 3000, size=500), position=at(3000))
        wal = state_dir / (DB_NAME + "-wal")
        assert wal.stat().st_size > 0
        assert s.checkpoint()
        assert wal.stat().st_size == 0
        assert len(all_rids(s)) == 3000


def test_damaged_pages_are_found_at_open(state_dir: Path) -> None:
    with State.open(state_dir) as s:
        s.commit_batch(records(0, 2000, size=300), position=at(2000))
    db = state_dir / DB_NAME
    data = bytearray(db.read_bytes())
    page = 4096
    rng = random.Random(1)
    for n in range(3, len(data) // page, 2):
        data[n * page : n * page + 64] = rng.randbytes(64)
    db.write_bytes(bytes(data))

    error = assert_refused(state_dir)

    assert ".recover" in error.recovery


def test_a_database_from_a_newer_jobcompd_is_refused(state_dir: Path) -> None:
    with State.open(state_dir) as s:
        s.commit_batch(records(0, 1))
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()

    error = assert_refused(state_dir)

    assert "newer" in error.reason and str(SCHEMA_VERSION + 1) in error.reason


# The tables of schema 1 (jobcompd before the (jobid, rid) keys), as that version created them.
SCHEMA_V1 = """
CREATE TABLE spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rid TEXT NOT NULL UNIQUE, jobid INTEGER NOT NULL,
    payload BLOB NOT NULL, source TEXT NOT NULL DEFAULT '', enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT);
CREATE TABLE deadletter (
    seq INTEGER PRIMARY KEY, rid TEXT NOT NULL UNIQUE, jobid INTEGER NOT NULL, payload BLOB NOT NULL,
    source TEXT NOT NULL, enqueued_at REAL NOT NULL, attempts INTEGER NOT NULL, last_error TEXT,
    reason TEXT NOT NULL, failed_at REAL NOT NULL);
CREATE TABLE delivered (
    rid TEXT PRIMARY KEY, jobid INTEGER NOT NULL, delivered_at REAL NOT NULL,
    kafka_partition INTEGER, kafka_offset INTEGER) WITHOUT ROWID;
CREATE TABLE quarantine (
    id INTEGER PRIMARY KEY, source TEXT NOT NULL, line_no INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL, raw BLOB NOT NULL, reason TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE position (
    source TEXT PRIMARY KEY, path TEXT NOT NULL, fingerprint TEXT NOT NULL,
    byte_offset INTEGER NOT NULL, line_no INTEGER NOT NULL, inode INTEGER NOT NULL,
    dev INTEGER NOT NULL, size INTEGER NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID;
CREATE TABLE meta (key TEXT PRIMARY KEY, value) WITHOUT ROWID;
PRAGMA application_id = 1245924676;
PRAGMA user_version = 1;
"""


# Schema 2 keyed the spool and the delivered ledger by (jobid, rid); its other tables are schema 1's.
SCHEMA_V2 = (
    """
CREATE TABLE spool (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, rid TEXT NOT NULL, jobid INTEGER NOT NULL,
    payload BLOB NOT NULL, source TEXT NOT NULL DEFAULT '', enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, last_error TEXT, UNIQUE (jobid, rid));
CREATE TABLE delivered (
    jobid INTEGER NOT NULL, rid TEXT NOT NULL, delivered_at REAL NOT NULL,
    kafka_partition INTEGER, kafka_offset INTEGER, PRIMARY KEY (jobid, rid)) WITHOUT ROWID;
"""
    + ";".join(
        statement
        for statement in SCHEMA_V1.split(";")
        if not statement.strip().startswith(("CREATE TABLE spool", "CREATE TABLE delivered"))
    ).replace("user_version = 1", "user_version = 2")
)


@pytest.mark.parametrize("schema", [SCHEMA_V1, SCHEMA_V2], ids=["schema-1", "schema-2"])
def test_an_older_database_is_upgraded_in_place_keeping_everything(state_dir: Path, schema: str) -> None:
    state_dir.mkdir()
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        raw.executescript(schema)
        raw.executemany(
            "INSERT INTO meta VALUES (?, ?)",
            [("spooled_total", 9), ("delivered_total", 3), ("created_at", 1.0)],
        )
        # Records 0-2 were delivered; 3-7 wait in the spool with seqs 4-8; 8 is a dead letter.
        raw.executemany(
            "INSERT INTO spool (seq, rid, jobid, payload, source, enqueued_at, attempts, last_error)"
            " VALUES (?, ?, ?, ?, 'log', 1.0, ?, ?)",
            [(r.jobid + 1, r.rid, r.jobid, r.payload, r.jobid, f"e{r.jobid}") for r in records(3, 8)],
        )
        raw.executemany(
            "INSERT INTO delivered (rid, jobid, delivered_at, kafka_partition, kafka_offset)"
            " VALUES (?, ?, 2.0, 0, ?)",
            [(r.rid, r.jobid, r.jobid) for r in records(0, 3)],
        )
        raw.execute(
            "INSERT INTO deadletter VALUES (9, ?, 8, ?, 'log', 1.0, 3, 'e8', 'too large', 3.0)",
            (records(8, 9)[0].rid, records(8, 9)[0].payload),
        )
        # Seqs up to 20 were handed out once (records since delivered and forgotten, say).
        raw.execute("UPDATE sqlite_sequence SET seq = 20 WHERE name = 'spool'")
    raw.close()

    with State.open(state_dir) as s:
        held = s.pending()
        assert [(r.seq, r.rid, r.payload, r.attempts, r.last_error) for r in held] == [
            (r.jobid + 1, r.rid, r.payload, r.jobid, f"e{r.jobid}") for r in records(3, 8)
        ]
        assert [(d.rid, d.reason) for d in s.dead_letters()] == [("r000000008", "too large")]
        assert s.commit_batch(records(0, 10)) == BatchResult(spooled=1, already_known=9, quarantined=0)
        new_seq = s.pending()[-1].seq
        assert new_seq > 20  # the counter carried over: no seq is used twice
        assert s.mark_delivered([Delivery(r.seq) for r in s.pending()]) == 6
        assert s.stats().delivered_total == 9
        assert all(s.is_known(r.rid, r.jobid) for r in records(0, 10))
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT count(*) FROM known").fetchone()[0] == 10
        assert raw.execute("SELECT name FROM sqlite_master WHERE name = 'delivered'").fetchall() == []
    raw.close()


def test_a_schema_3_spool_becomes_batches_keeping_seqs_attempts_and_order(state_dir: Path) -> None:
    """Schema 3 held one row per record; 4 holds one per batch: every record keeps its seq, read
    time, source and failed sends, and no seq is handed out twice."""
    from jobcompd.state._schema import _SCHEMA, _SPOOL_V3

    state_dir.mkdir()
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        raw.execute(_SPOOL_V3)
        for statement in _SCHEMA:
            if not statement.lstrip().startswith(("CREATE TABLE spool ", "CREATE TABLE spool_")):
                raw.execute(statement)
        raw.executemany("INSERT INTO meta VALUES (?, ?)", [("spooled_total", 7), ("created_at", 1.0)])
        # Seqs 3-5 read together, 6 later, a gap, 9-10 from another log; 12 is a dead letter.
        rows = [(3, 1.0, "a"), (4, 1.0, "a"), (5, 1.0, "a"), (6, 2.0, "a"), (9, 3.0, "b"), (10, 3.0, "c")]
        raw.executemany(
            "INSERT INTO spool (seq, rid, jobid, payload, source, enqueued_at, attempts, last_error)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [(seq, f"r{seq}", seq * 10, b"p%d" % seq, source, t, seq % 2, f"e{seq}" if seq == 5 else None)
             for seq, t, source in rows],
        )
        raw.execute("INSERT INTO deadletter VALUES (12, 'r12', 120, x'00', 'a', 1.0, 1, 'e', 'big', 3.0)")
        raw.execute(f"PRAGMA application_id = {0x4A434D44}")
        raw.execute("PRAGMA user_version = 3")
    raw.close()

    with State.open(state_dir) as s:
        held = s.pending()
        assert [(r.seq, r.rid, r.jobid, r.payload, r.source, r.enqueued_at, r.attempts, r.last_error)
                for r in held] == [
            (seq, f"r{seq}", seq * 10, b"p%d" % seq, source, t, seq % 2, f"e{seq}" if seq == 5 else None)
            for seq, t, source in rows
        ]
        assert s.spool_depth() == 6 and s.oldest_pending_at() == 1.0
        assert s.pending(after_seq=4, limit=2) == held[2:4]
        assert s.commit_batch(records(0, 1)).fresh[0].seq == 13
        assert s.mark_delivered([Delivery(seq) for seq in (3, 9, 10, 12)]) == 4
        assert [r.seq for r in s.pending()] == [4, 5, 6, 13]
        assert [d.seq for d in s.dead_letters()] == []
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT first_seq, count FROM spool ORDER BY first_seq").fetchall() == [
            (3, 3), (6, 1), (13, 1)  # the batch of 9-10 left whole once both were delivered
        ]
    raw.close()


def test_a_schema_4_spool_keeps_its_rows_as_they_are_and_new_rows_are_packed(state_dir: Path) -> None:
    """Schema 4 stored a batch's payloads end to end as they are; 5 packs them in one frame. The
    rows of a schema-4 state are read as they are, and the next commits are packed."""
    with State.open(state_dir) as s:
        s.commit_batch(records(0, 1))
    raw_rows = records(10, 15, size=300)
    with sqlite3.connect(state_dir / DB_NAME) as raw:  # the same state as schema 4 made it
        raw.execute("DELETE FROM spool")
        raw.execute("DELETE FROM spool_waiting")
        raw.execute("ALTER TABLE spool DROP COLUMN codec")
        raw.execute(
            "INSERT INTO spool (first_seq, count, source, enqueued_at, records, payloads)"
            " VALUES (1, 5, 'log', 1.0, ?, ?)",
            (
                orjson.dumps(
                    [[r.rid for r in raw_rows], [r.jobid for r in raw_rows],
                     [len(r.payload) for r in raw_rows], None]
                ),
                b"".join(r.payload for r in raw_rows),
            ),
        )
        raw.execute("INSERT INTO spool_waiting VALUES (1, zeroblob(5), 5)")
        raw.execute("UPDATE meta SET value = 5 WHERE key = 'last_seq'")
        raw.execute("PRAGMA user_version = 4")
    raw.close()

    with State.open(state_dir) as s:
        assert [(r.seq, r.rid, r.payload) for r in s.pending()] == [
            (i + 1, r.rid, r.payload) for i, r in enumerate(raw_rows)
        ]
        assert s.pending(after_seq=2, limit=2)[1].payload == raw_rows[3].payload
        s.commit_batch(records(20, 23, size=300))
        assert [r.payload for r in s.pending()[5:]] == [r.payload for r in records(20, 23, size=300)]
        assert s.mark_delivered([Delivery(seq) for seq in (1, 2, 3, 4, 5)]) == 5
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        assert raw.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert raw.execute("SELECT first_seq, codec FROM spool").fetchall() == [(6, 1)]
    raw.close()


# -- payloads packed ------------------------------------------------------------------------------


def jobcomp_like(start: int, stop: int) -> list[NewRecord]:
    """Records whose payloads share their keys, as the plugin's JSON does (they compress)."""
    return [
        NewRecord(
            f"r{i:09d}", i,
            b'{"jobid":%d,"username":"user%d","partition":"batch","cluster":"c1","job_state":'
            b'"COMPLETED","elapsed":%d}' % (i, i % 50, i * 7),
            "log",
        )
        for i in range(start, stop)
    ]


def spool_rows(state_dir: Path) -> list[tuple[int, int, int]]:
    """(first_seq, stored payload bytes, codec) of each spool row."""
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        rows = raw.execute("SELECT first_seq, length(payloads), codec FROM spool ORDER BY 1").fetchall()
    raw.close()
    return rows


def test_a_batch_s_payloads_are_stored_packed_and_read_back_exactly(state: State, state_dir: Path) -> None:
    batch = jobcomp_like(0, 3000)
    state.commit_batch(batch, position=at(3000))

    ((first, stored, codec),) = spool_rows(state_dir)
    assert codec == 1 and stored < sum(len(r.payload) for r in batch) / 4
    assert [(r.rid, r.payload) for r in state.pending(limit=5000)] == [(r.rid, r.payload) for r in batch]
    # A slice from the middle of the frame, and a record settled in between.
    assert [r.payload for r in state.pending(after_seq=1500, limit=3)] == [r.payload for r in batch[1500:1503]]
    state.mark_delivered([Delivery(1502)])
    assert [r.seq for r in state.pending(after_seq=1500, limit=3)] == [1501, 1503, 1504]
    assert state.dead_letter(1504, "refused")
    assert [d.payload for d in state.dead_letters()] == [batch[1503].payload]


@pytest.mark.parametrize("sizes", [[], [10], [700] * 3000, [700] * 93 + [70_000] + [900] * 200, [140_000, 5]])
def test_a_frame_fed_a_piece_at_a_time_holds_the_payloads_end_to_end(sizes: list[int]) -> None:
    import zstandard

    rng = random.Random(len(sizes))
    words = [b'"job_name":"x%d",' % i for i in range(50)]
    payloads = [b"".join(rng.choices(words, k=size // 16 + 1))[:size] for size in sizes]
    whole = b"".join(payloads)
    packed = _codec.pack(payloads)
    frame = zstandard.get_frame_parameters(packed)
    assert frame.has_checksum and frame.content_size == _codec.packed_size(packed) == len(whole)
    assert zstandard.ZstdDecompressor().decompress(packed) == whole
    assert len(packed) < len(whole) / 4 or len(whole) < 100


def test_payloads_packed_beside_the_commit_are_stored_only_for_the_whole_batch(
    state: State, state_dir: Path
) -> None:
    from jobcompd.batch import RecordBatch
    from jobcompd.state import pack_payloads

    def columns(batch: list[NewRecord], packed: bytes | None) -> RecordBatch:
        payloads = [r.payload for r in batch]
        return RecordBatch(
            [r.rid for r in batch], [r.jobid for r in batch], payloads, list(range(len(batch))), [], [],
            packed,  # type: ignore[arg-type]
        )

    first = jobcomp_like(0, 100)
    packed = pack_payloads([r.payload for r in first])
    state.commit_batch(columns(first, packed), source="log")
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        assert raw.execute("SELECT payloads FROM spool").fetchone()[0] == packed  # taken as it is
    raw.close()

    # Some of these are known already: what is stored is the rest, not the frame made for all.
    second = jobcomp_like(50, 150)
    state.commit_batch(columns(second, pack_payloads([r.payload for r in second])), source="log")
    # A frame that does not hold these payloads' bytes is not trusted.
    third = jobcomp_like(150, 160)
    state.commit_batch(columns(third, pack_payloads([b"x"])), source="log")

    assert [(r.rid, r.payload) for r in state.pending(limit=500)] == [
        (r.rid, r.payload) for r in jobcomp_like(0, 160)
    ]


@pytest.mark.parametrize("damage", ["a flipped byte", "cut short"])
def test_a_damaged_frame_is_refused_never_sent_as_other_bytes(
    state: State, state_dir: Path, damage: str
) -> None:
    state.commit_batch(jobcomp_like(0, 500), position=at(500))
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        (frame,) = raw.execute("SELECT payloads FROM spool").fetchone()
        bad = bytearray(frame)
        if damage == "cut short":
            bad = bad[: len(bad) // 2]
        else:
            bad[len(bad) // 2] ^= 0x10
        raw.execute("UPDATE spool SET payloads = ?", (bytes(bad),))
    raw.close()

    for read in (lambda: state.pending(limit=10), lambda: state.dead_letter(400, "refused")):
        with pytest.raises(StateError) as failure:
            read()
        assert "spool row 1" in failure.value.reason and ".recover" in failure.value.recovery


def test_many_records_of_a_batch_are_dead_lettered_whole(state: State) -> None:
    batch = records(0, 50)
    state.commit_batch(batch, position=at(50))
    held = state.pending()
    reasons = {r.seq: f"refused {r.jobid}" for r in held[::2]}
    assert state.dead_letter_many(reasons) == 25
    assert [(d.rid, d.payload, d.reason) for d in state.dead_letters()] == [
        (r.rid, r.payload, f"refused {r.jobid}") for r in batch[::2]
    ]
    assert [r.rid for r in state.pending()] == [r.rid for r in batch[1::2]]
    assert state.dead_letter_many(reasons) == 0  # not spooled any more


def test_a_batch_leaves_the_spool_when_its_last_record_is_settled(state: State) -> None:
    state.commit_batch(records(0, 6), position=at(6))
    seqs = [r.seq for r in state.pending()]
    assert state.dead_letter(seqs[1], "too large")
    assert state.mark_delivered([Delivery(seq) for seq in seqs[2:]]) == 4
    state.record_attempt(seqs[0], "timed out")
    assert [(r.seq, r.attempts, r.last_error) for r in state.pending()] == [(seqs[0], 1, "timed out")]
    assert state.record_attempts({seqs[3]: "x"}) == 0  # delivered: not spooled any more
    assert state.mark_delivered([Delivery(seqs[0])]) == 1
    assert state.pending() == [] and state.spool_depth() == 0 and state.oldest_pending_at() is None
    with sqlite3.connect(state.path) as raw:
        assert raw.execute("SELECT count(*) FROM spool").fetchone()[0] == 0
        assert raw.execute("SELECT count(*) FROM spool_attempt").fetchone()[0] == 0
    raw.close()
    assert state.retry_dead_letters() == 1
    back = state.pending()
    assert [(r.rid, r.attempts, r.last_error) for r in back] == [("r000000001", 0, "too large")]
    assert back[0].seq > seqs[-1]


def test_another_programs_database_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    with sqlite3.connect(state_dir / DB_NAME) as raw:
        raw.execute("CREATE TABLE accounts (id INTEGER)")
    raw.close()

    error = assert_refused(state_dir)

    assert "not a jobcompd state database" in error.reason


def test_a_leftover_write_ahead_log_without_its_database_is_refused(state_dir: Path) -> None:
    state_dir.mkdir()
    (state_dir / (DB_NAME + "-wal")).write_bytes(b"\x37\x7f\x06\x82" + bytes(28))

    error = assert_refused(state_dir)

    assert "-wal" in error.reason
    assert not (state_dir / DB_NAME).exists()


# -- disk trouble --------------------------------------------------------------------------------


def fill(path: Path) -> None:
    chunk = b"\0" * 65536
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return
                chunk = chunk[: len(chunk) // 2]


def check_full_disk_round(
    state: State, exhaust: Callable[[], object], make_room: Callable[[], object]
) -> None:
    state.commit_batch(records(0, 10), position=at(10))
    exhaust()
    before = state.stats()
    big = records(10, 400, size=4000)

    with pytest.raises(StateError) as failure:
        state.commit_batch(big, position=at(400))

    assert failure.value.transient
    assert "full" in failure.value.reason
    assert state.position("log") == at(10)
    assert all_rids(state) == [r.rid for r in records(0, 10)]
    assert state.stats().spooled_total == before.spooled_total

    make_room()
    assert state.commit_batch(big, position=at(400)).spooled == 390
    assert state.spool_depth() == 400


def test_a_full_filesystem_rolls_back_and_recovers(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "small", "8m") as fs:
        state_dir = fs / "state"
        with State.open(state_dir) as s:
            check_full_disk_round(s, lambda: fill(fs / "filler"), (fs / "filler").unlink)
        with State.open(state_dir) as s:
            assert s.position("log") == at(400)
            assert s.spool_depth() == 400


def test_a_full_database_rolls_back_and_recovers(state: State) -> None:
    """Simulates a full disk with max_page_count; runs even where no tmpfs can be mounted."""

    def limit(pages: int | None) -> None:
        with state._lock:
            assert state._db is not None
            count = state._db.execute("PRAGMA page_count").fetchone()[0]
            state._db.execute(f"PRAGMA max_page_count = {pages or count + 8}")

    check_full_disk_round(state, lambda: limit(None), lambda: limit(2**30))


def test_a_read_only_filesystem_is_refused_with_a_reason(tmp_path: Path) -> None:
    with mounted_tmpfs(tmp_path / "ro", "4m") as fs:
        state_dir = fs / "state"
        with State.open(state_dir) as s:
            s.commit_batch(records(0, 2), position=at(2))
        subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)

        error = assert_refused(state_dir)
        assert "not writable" in error.reason
        with State.open(state_dir, readonly=True) as ro:
            assert ro.position("log") == at(2)


def test_an_unwritable_directory_is_refused_with_a_reason(state_dir: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can write anyway; see the read-only filesystem test")
    State.open(state_dir).close()
    state_dir.chmod(0o500)
    try:
        error = assert_refused(state_dir)
        assert "not writable" in error.reason
    finally:
        state_dir.chmod(0o700)


# -- concurrency and crashes ---------------------------------------------------------------------


def test_reader_and_producer_threads_share_one_state(state: State) -> None:
    total = 5000
    errors: list[BaseException] = []

    def reader() -> None:
        try:
            for start in range(0, total, 100):
                state.commit_batch(records(start, start + 100), position=at(start + 100))
        except BaseException as exc:
            errors.append(exc)

    def producer() -> None:
        try:
            seen = delivered = 0
            deadline = time.monotonic() + 30
            while delivered < total and time.monotonic() < deadline:
                batch = state.pending(after_seq=seen, limit=250)
                if batch:
                    seen = batch[-1].seq
                    delivered += state.mark_delivered([Delivery(r.seq) for r in batch])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader), threading.Thread(target=producer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert state.spool_depth() == 0
    assert state.stats().delivered_total == total
    assert state.position("log") == at(total)


CRASHING_WRITER = r"""
import random, sys
from jobcompd.identity import Position
from jobcompd.state import Delivery, NewRecord, State

directory, synchronous, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(seed)
state = State.open(directory, synchronous=synchronous)
position = state.position("log")
n = position.offset if position else 0
print("ready", n, flush=True)
while True:
    k = rng.randint(1, 400)
    batch = [NewRecord(f"r{i:09d}", i, b"j" * rng.randint(10, 3000), "log") for i in range(n, n + k)]
    result = state.commit_batch(
        batch, position=Position("log", "/var/log/slurm/jobcomp.log", "fp", n + k, n + k)
    )
    if result.already_known:
        print("REREAD", n, flush=True)
    n += k
    print(n, flush=True)
    roll = rng.random()
    if roll < 0.5:
        sent = state.pending(limit=rng.randint(1, 600))
        state.mark_delivered([Delivery(r.seq) for r in sent])
    elif roll < 0.6:
        sent = state.pending(limit=5)
        state.dead_letter_many({r.seq: "rejected by broker" for r in sent})
    elif roll < 0.65:
        state.retry_dead_letters()
"""


def test_kill_9_loses_nothing_and_rereads_nothing(state_dir: Path) -> None:
    trials = 24
    rng = random.Random(20240601)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    acknowledged = 0
    killed_after: list[int] = []
    in_flight = 0  # kills that hit after a commit became durable but before the child said so
    for trial in range(trials):
        synchronous = "full" if trial % 2 == 0 else "normal"
        child = subprocess.Popen(
            [sys.executable, "-c", CRASHING_WRITER, str(state_dir), synchronous, str(trial)],
            stdout=subprocess.PIPE,
            cwd=ROOT,
            env=env,
        )
        assert child.stdout is not None
        ready = child.stdout.readline().split()
        assert ready[:1] == [b"ready"], ready
        assert int(ready[1]) >= acknowledged
        time.sleep(rng.uniform(0.0, 0.3))
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert child.returncode == -signal.SIGKILL
        lines = child.stdout.read().split(b"\n")[:-1]  # the last piece may be a torn line
        child.stdout.close()
        assert not [line for line in lines if line.startswith(b"REREAD")]
        if lines:
            acknowledged = max(acknowledged, int(lines[-1]))

        with State.open(state_dir) as s:
            position = s.position("log")
            committed = position.offset if position else 0
            spooled = all_rids(s)
            dead = [d.rid for d in s.dead_letters()]
            depth = s.spool_depth()
            stats = s.stats()
        with sqlite3.connect(state_dir / DB_NAME) as raw:
            known = [row[0] for row in raw.execute("SELECT rid FROM known")]
        raw.close()

        assert acknowledged <= committed <= acknowledged + 400, "a committed batch was lost"
        assert len(known) == len(set(known)) == committed, "records known twice or missing"
        assert set(known) == {f"r{i:09d}" for i in range(committed)}, "records beyond the position"
        held = spooled + dead
        assert len(held) == len(set(held)), "a record both spooled and dead-lettered, or twice"
        assert stats.spooled_total == committed
        assert stats.already_known_total == 0
        assert depth + len(dead) == committed - stats.delivered_total
        in_flight += committed > acknowledged
        acknowledged = committed
        killed_after.append(committed)

    print(
        f"kill -9 trials: {trials}, records committed: {acknowledged}, "
        f"commits durable but unacknowledged at the kill: {in_flight}, per trial: {killed_after}"
    )
    assert acknowledged > 0


def test_round_trip_of_a_10k_batch(state: State) -> None:
    batch = records(0, 10_000, size=900)
    started = time.perf_counter()
    state.commit_batch(batch, position=at(10_000))
    committed = time.perf_counter()
    pending = state.pending(limit=10_000)
    read = time.perf_counter()
    assert state.mark_delivered([Delivery(r.seq) for r in pending]) == 10_000
    done = time.perf_counter()
    print(
        f"10k records (~1 KB each): commit_batch {committed - started:.3f}s, "
        f"pending {read - committed:.3f}s, mark_delivered {done - read:.3f}s, "
        f"total {done - started:.3f}s"
    )
    assert state.spool_depth() == 0


def test_a_state_killed_while_being_created_starts_fresh_next_time(tmp_path: Path) -> None:
    # kill -9 while the database is made leaves only its temporary file (no record was ever in
    # it); jobcompd.db itself never exists half made, so an empty one is damage from outside.
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    (directory / "jobcompd.db.new").write_bytes(b"")
    (directory / "jobcompd.db.new-journal").write_bytes(b"x")
    with State.open(directory) as state:
        assert state.commit_batch(records(0, 3)).spooled == 3
    assert not (directory / "jobcompd.db.new").exists()
    with State.open(directory) as state:
        assert state.spool_depth() == 3
