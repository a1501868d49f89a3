"""The parse worker: a real child process that parses batches exactly as the parent would; and
the parse thread, that does the same beside its caller.

Compared with in-process parsing on the same lines, committed to real SQLite states; the child
killed mid-run, and the child of a jobcompd process that is itself killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from itertools import accumulate
from pathlib import Path

import pytest

from jobcompd import fastpath, ingest
from jobcompd.batch import ParseSpec, RecordBatch, parse_batch
from jobcompd.identity import Position
from jobcompd.ingest import WORKER_MIN_LINES, Ingestor, ParseThread, ParseWorker, ReadAhead
from jobcompd.record import ParseError
from jobcompd.state import State, _codec
from jobcompd.zone import resolve as resolve_zone
from tests.jobcompd_env import alive, parse_workers, wait_for
from tests.slurmctld import mixed_lines

UTC_SPEC = ParseSpec(("UTC", None), None, 65536)
# A record cut short after its name (one that stops before JobState= is read as a name's line
# break: see joining.parse_records), garbage and an empty line.
BAD = [b"garbage\n", b"JobId=12 UserId=alice(1000) GroupId=users(100) Name=cut short JobState=COMPL\n", b"\n"]


def batch(n: int, seed: int) -> list[bytes]:
    """``n`` lines of mixed generations with a few bad ones spread through them."""
    lines = mixed_lines(n, seed=seed)
    for i, bad in enumerate(BAD):
        lines.insert((i + 1) * n // (len(BAD) + 1), bad)
    return lines


def children_once(count: int, parent: int | None = None) -> list[int]:
    """Wait until exactly ``count`` parse workers run (a new one starts asynchronously)."""
    found: list[int] = []

    def settled() -> bool:
        found[:] = parse_workers(os.getpid() if parent is None else parent)
        return len(found) == count

    wait_for(settled, timeout=20, what=f"{count} parse worker(s)")
    return found


@pytest.fixture
def worker() -> Iterator[ParseWorker]:
    w = ParseWorker()
    yield w
    w.close()


def commit_all(state: State, ingestor: Ingestor, batches: list[list[bytes]]) -> None:
    offset = line_no = 0
    for lines in batches:
        size = sum(map(len, lines))
        ingestor.commit(
            lines,
            source="/var/log/slurm/jobcomp.log",
            first_line_no=line_no + 1,
            first_offset=offset,
            position=Position("log", "/var/log/slurm/jobcomp.log", "fp", offset + size, line_no + len(lines)),
        )
        offset += size
        line_no += len(lines)


def held(state: State) -> tuple[object, ...]:
    return (
        [(r.rid, r.jobid, r.payload, r.source) for r in state.pending(limit=10**9)],
        [(q.source, q.line_no, q.offset, q.raw, q.reason) for q in state.quarantined()],
        state.positions(),
    )


def test_the_child_commits_exactly_what_in_process_parsing_commits(
    tmp_path: Path, worker: ParseWorker
) -> None:
    zone = resolve_zone("Europe/Berlin")
    batches = [batch(3000, seed=1), batch(WORKER_MIN_LINES - 1, seed=2), batch(500, seed=3)]
    with State.open(tmp_path / "inline") as inline, State.open(tmp_path / "child") as child:
        spec = ParseSpec(zone.spec, "fallback", 65536)
        commit_all(inline, Ingestor(inline, spec), batches)
        commit_all(child, Ingestor(child, spec, worker=worker), batches)
        assert len(children_once(1)) == 1  # the big batches really went to a child
        expected, got = held(inline), held(child)

    assert got == expected
    records, quarantined, _ = got
    assert len(records) == sum(map(len, batches)) - 3 * len(BAD)
    assert len(quarantined) == 3 * len(BAD)
    # Quarantined lines keep their own line numbers and byte offsets in the file.
    log = b"".join(b"".join(lines) for lines in batches)
    for _, line_no, offset, raw, reason in quarantined:
        assert log.splitlines(keepends=True)[line_no - 1] == raw
        assert log[offset : offset + len(raw)] == raw
        assert reason


def test_a_killed_child_costs_no_line_and_is_replaced(tmp_path: Path, worker: ParseWorker) -> None:
    zone = resolve_zone("UTC")
    lines = mixed_lines(4 * 1000, seed=5)
    with State.open(tmp_path / "state") as state:
        ingestor = Ingestor(state, ParseSpec(zone.spec, None, 65536), worker=worker)
        commit_all(state, ingestor, [lines[:1000]])
        (first,) = children_once(1)

        # Killed between batches, then while parsing one (the batch is parsed in-process instead).
        os.kill(first, signal.SIGKILL)
        children_once(0)
        commit_all(state, ingestor, [lines[1000:2000]])
        pending = ingestor.prepare(lines[2000:3000], source="/var/log/slurm/jobcomp.log")
        (second,) = children_once(1)
        assert second != first
        os.kill(second, signal.SIGKILL)
        ingestor.commit(pending, source="/var/log/slurm/jobcomp.log", first_line_no=2001, first_offset=0, position=None)
        commit_all(state, ingestor, [lines[3000:]])

        assert [r.jobid for r in state.pending(limit=10**9)] == list(range(1000, 1000 + len(lines)))
        assert state.quarantined() == []
        # The next batch has a child again. (The kill may be noticed only by the batch after it,
        # when that one finds the child gone: it is parsed in-process, and a child is started for
        # the one after. The test waited for a child at once, and under load it timed out.)
        again = ingestor.prepare(lines[3000:], source="/var/log/slurm/jobcomp.log")
        (third,) = children_once(1)
        assert third not in (first, second)
        result = ingestor.commit(again, source="/var/log/slurm/jobcomp.log", first_line_no=3001, first_offset=0,
                                 position=None)
        assert result.already_known == len(lines) - 3000


def test_batches_queued_for_a_dead_child_do_not_take_its_successor_down(
    tmp_path: Path, worker: ParseWorker
) -> None:
    lines = mixed_lines(3 * 1000, seed=7)
    source = "/var/log/slurm/jobcomp.log"
    with State.open(tmp_path / "state") as state:
        ingestor = Ingestor(state, UTC_SPEC, worker=worker)
        # As replay pipelines: the next batch is handed over before the previous one is committed.
        first = ingestor.prepare(lines[:1000], source=source)
        second = ingestor.prepare(lines[1000:2000], source=source)
        (dead,) = children_once(1)
        os.kill(dead, signal.SIGKILL)
        children_once(0)
        ingestor.commit(first, source=source, first_line_no=1, first_offset=0, position=None)
        third = ingestor.prepare(lines[2000:], source=source)
        (successor,) = children_once(1)
        ingestor.commit(second, source=source, first_line_no=1001, first_offset=0, position=None)
        ingestor.commit(third, source=source, first_line_no=2001, first_offset=0, position=None)

        assert children_once(1) == [successor]  # the second batch's failure was the dead child's
        assert worker.pid == successor
        assert [r.jobid for r in state.pending(limit=10**9)] == list(range(1000, 1000 + len(lines)))


CHILD_OF_KILLED_PARENT = r"""
import sys
from jobcompd.batch import ParseSpec
from jobcompd.ingest import Ingestor, ParseWorker
from jobcompd.state import State
from tests.slurmctld import mixed_lines

state = State.open(sys.argv[1])
ingestor = Ingestor(state, ParseSpec(("UTC", None), None, 65536), worker=ParseWorker())
ingestor.commit(mixed_lines(500), source="log", first_line_no=1, first_offset=0, position=None)
print("committed", flush=True)
sys.stdin.read()
"""


def test_the_child_dies_with_a_parent_killed_by_sigkill(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", CHILD_OF_KILLED_PARENT, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=Path(__file__).resolve().parent.parent,
    )
    try:
        assert parent.stdout is not None
        assert parent.stdout.readline() == b"committed\n"
        (child,) = children_once(1, parent.pid)
        parent.kill()
        parent.wait()
        wait_for(lambda: not alive(child), timeout=10, what="the orphaned child to die")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_small_batches_are_parsed_in_process(tmp_path: Path, worker: ParseWorker) -> None:
    with State.open(tmp_path / "state") as state:
        ingestor = Ingestor(state, UTC_SPEC, worker=worker)
        for n in range(5):
            commit_all(state, ingestor, [mixed_lines(10, seed=n)])
        assert parse_workers(os.getpid()) == []  # trickles of lines never start the child
        assert state.spool_depth() == 50


def test_a_record_the_state_refuses_costs_that_record_alone(tmp_path: Path) -> None:
    # The parser keeps job ids within 32 bits; should anything still reach the state that SQLite
    # refuses (its CHECK wants 64-bit integers), that record is quarantined and the rest spooled.
    from jobcompd.batch import RecordBatch
    from jobcompd.ingest import Prepared

    lines = [b"line %d\n" % i for i in range(5)]
    jobids = [0, 1, 2**63, 3, 4]
    pending = Prepared(lines, "log")
    pending._parsed = RecordBatch([f"r{i}" for i in range(5)], jobids, [b"{}"] * 5, [0, 1, 2, 3, 4], [], [])
    with State.open(tmp_path / "state", synchronous="normal") as state:
        ingestor = Ingestor(state, UTC_SPEC)
        position = Position("file:x", "log", "x", 40, 5)
        result = ingestor.commit(pending, source="log", first_line_no=1, first_offset=0,
                                 position=position)
        assert (result.spooled, result.quarantined) == (4, 1)
        assert sorted(r.jobid for r in state.pending()) == [0, 1, 3, 4]
        [q] = state.quarantined()
        assert q.line_no == 3 and q.raw == b"line 2\n" and "refused" in q.reason
        stored = state.position("file:x")
        assert stored is not None and (stored.offset, stored.line_no) == (40, 5)


def test_a_batch_never_ends_inside_a_record_split_by_line_breaks() -> None:
    import io

    from jobcompd.ingest import read_batches
    from jobcompd.joining import parse_records
    from tests.test_record import real

    split = real(name=b"one\ntwo\nthree").splitlines(keepends=True)  # three physical lines
    lines = [*mixed_lines(9, seed=4), *split, *mixed_lines(5, seed=6)]
    for size in range(1, len(lines) + 2):
        batches = list(read_batches(io.BytesIO(b"".join(lines)), size))
        assert [line for batch in batches for line in batch] == lines  # each line once, in order
        for batch in batches:
            # Every batch parses whole: the split record is never cut between two batches.
            assert all(not isinstance(r, ParseError) for _, _, r in parse_records(batch)), size


def parsed_on(monkeypatch: pytest.MonkeyPatch, fail_first: int = 0) -> list[tuple[str, int]]:
    """Record the thread and size of each batch parsed; the first ``fail_first`` parses fail."""
    seen: list[tuple[str, int]] = []
    real = ingest.parse_batch

    def observed(lines: Sequence[bytes], spec: ParseSpec) -> RecordBatch:
        seen.append((threading.current_thread().name, len(lines)))
        if len(seen) <= fail_first:
            raise MemoryError("no memory for this batch")
        return real(lines, spec)

    monkeypatch.setattr(ingest, "parse_batch", observed)
    return seen


def packed_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the size of each batch whose payloads the commit packs itself."""
    packed: list[int] = []
    real = _codec.pack

    def observed(payloads: Sequence[bytes]) -> bytes:
        packed.append(len(payloads))
        return real(payloads)

    monkeypatch.setattr(_codec, "pack", observed)
    return packed


def test_a_parse_thread_commits_exactly_what_in_place_parsing_commits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zone = resolve_zone("Europe/Berlin")
    batches = [batch(3000, seed=1), batch(WORKER_MIN_LINES - 1 - len(BAD), seed=2), batch(500, seed=3)]
    spec = ParseSpec(zone.spec, "fallback", 65536)
    with State.open(tmp_path / "inline") as inline, State.open(tmp_path / "thread") as threaded:
        commit_all(inline, Ingestor(inline, spec), batches)
        seen = parsed_on(monkeypatch)
        packed_by_commit = packed_on(monkeypatch)
        parser = ParseThread()
        try:
            commit_all(threaded, Ingestor(threaded, spec, worker=parser), batches)
        finally:
            parser.close()
        assert held(threaded) == held(inline)
    main = threading.current_thread().name
    # The big batches on the thread, the small one in place.
    assert [(name != main, size) for name, size in seen] == [(True, 3003), (False, WORKER_MIN_LINES - 1), (True, 503)]
    # The thread packed the payloads of its batches too: the commit packed only the small one's.
    assert packed_by_commit == [WORKER_MIN_LINES - 1 - len(BAD)]


def test_only_a_big_batch_is_parsed_beside_the_caller(tmp_path: Path) -> None:
    # The daemon reads the next batch ahead only while one is parsed beside it: a trickle's small
    # batch is parsed by the daemon's reader, and what comes next joins it (ReadAhead.join).
    with State.open(tmp_path / "state", synchronous="normal") as state:
        parser = ParseThread()
        try:
            ingestor = Ingestor(state, UTC_SPEC, worker=parser)
            big = ingestor.prepare(batch(WORKER_MIN_LINES, seed=5), source="log")
            small = ingestor.prepare(batch(3, seed=6), source="log")
            assert big.handed and not small.handed
            alone = Ingestor(state, UTC_SPEC).prepare(batch(WORKER_MIN_LINES, seed=7), source="log")
            assert not alone.handed and not alone.ready
            ingestor.commit(big, source="log", first_line_no=1, first_offset=0, position=None)
            assert big.ready  # parsed and taken
        finally:
            parser.close()


def test_batches_joined_commit_what_they_commit_one_by_one(tmp_path: Path) -> None:
    """A trickle's batches, each read right after the one before and joined to it
    (``ReadAhead.join``, the daemon's gathering), commit in one transaction the records, the
    quarantined lines (with their own line numbers and byte offsets) and the position that
    committing them one by one does."""
    log = "/var/log/slurm/jobcomp.log"
    batches = [batch(4, seed=8), mixed_lines(1, seed=9), batch(2, seed=10), [BAD[0]]]
    with State.open(tmp_path / "apart") as apart, State.open(tmp_path / "joined") as joined:
        commit_all(apart, Ingestor(apart, UTC_SPEC), batches)
        ingestor = Ingestor(joined, UTC_SPEC)
        ahead = ReadAhead(ingestor, joined)
        offset = line_no = 0
        for lines in batches:
            size = sum(map(len, lines))
            position = Position("log", log, "fp", offset + size, line_no + len(lines))
            offsets = list(accumulate(map(len, lines[:-1]), initial=offset))
            if not ahead:
                ahead.add(lines, source=log, position=position, first_line_no=1, first_offset=0,
                          offsets=offsets)
            else:
                assert ahead.joins(position, offset, len(lines))
                ahead.join(lines, ingestor.parse(lines), position=position, offsets=offsets)
            offset += size
            line_no += len(lines)
        assert len(ahead) == 1
        result = ahead.commit()
        assert held(joined) == held(apart)
        records, quarantined, _ = held(joined)
        assert result.spooled == len(records) == 4 + 1 + 2
        assert len(quarantined) == 2 * len(BAD) + 1


def test_only_the_lines_that_come_next_in_the_same_file_join_a_small_batch(tmp_path: Path) -> None:
    log = "/var/log/slurm/jobcomp.log"
    lines = mixed_lines(3, seed=11)
    size = sum(map(len, lines))
    with State.open(tmp_path / "state", synchronous="normal") as state:
        parser = ParseThread()
        try:
            ahead = ReadAhead(Ingestor(state, UTC_SPEC, worker=parser), state)
            after = Position("log", log, "fp", size + 100, 4)
            assert not ahead.joins(after, size, 1)  # nothing held
            ahead.add(lines, source=log, position=Position("log", log, "fp", size, 3), first_line_no=1,
                      first_offset=0)
            assert ahead.joins(after, size, 1)
            assert not ahead.joins(after, size + 1, 1)  # not where the batch ends
            assert not ahead.joins(Position("other", log, "fp2", size + 100, 4), size, 1)  # another file
            assert not ahead.joins(Position("log", log + ".1", "fp", size + 100, 4), size, 1)  # renamed
            assert not ahead.joins(after, size, WORKER_MIN_LINES - 3)  # no longer a small batch
            assert ahead.joins(after, size, WORKER_MIN_LINES - 4)
            big = batch(WORKER_MIN_LINES, seed=12)
            end = size + sum(map(len, big))
            ahead.add(big, source=log, position=Position("log", log, "fp", end, 3 + len(big)),
                      first_line_no=4, first_offset=size)
            beyond = Position("log", log, "fp", end + 100, 5 + len(big))
            assert not ahead.joins(beyond, end, 1)  # the newest batch is parsed beside
        finally:
            parser.close()


def test_a_batch_the_parse_thread_fails_is_parsed_again_in_place(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = batch(1000, seed=4)
    with State.open(tmp_path / "inline") as inline, State.open(tmp_path / "thread") as threaded:
        commit_all(inline, Ingestor(inline, UTC_SPEC), [lines])
        seen = parsed_on(monkeypatch, fail_first=1)
        parser = ParseThread()
        try:
            commit_all(threaded, Ingestor(threaded, UTC_SPEC, worker=parser), [lines])
        finally:
            parser.close()
        assert held(threaded) == held(inline)
    assert [size for _, size in seen] == [1003, 1003]
    assert seen[0][0] != seen[1][0] == threading.current_thread().name


def test_a_batch_from_the_parse_worker_is_never_vouched_for(worker: ParseWorker) -> None:
    # Made in another process: the state checks its types, even when the child's compiled reader
    # read every line.
    spec = ParseSpec(("UTC", None), None, 65536)
    encoder = fastpath.compiled_encoder(*spec)
    if encoder is None:
        pytest.skip(f"the compiled reader is not in use: {fastpath.PARSER}")
    lines = [line for line in mixed_lines(200, seed=5) if encoder.encode_line(line) is not None]
    assert parse_batch(lines, spec).typed  # in this process
    future = worker.submit(spec, lines)
    assert future is not None
    got = future.result(timeout=60)
    assert len(got.rids) == len(lines) and not got.typed
