"""Tailer tests: real files, a real watchdog observer, real renames and truncations.

A :class:`Harness` drives the tailer as the daemon does — read a batch, commit its end position
(into a dict standing in for the database), read again — and checks on every commit that each
file is read contiguously: a batch starts exactly where the committed position of its file is.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import random
import shutil
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import LogCapture

from jobcompd.identity import Position, fingerprint
from jobcompd.logfile import CHUNK
from jobcompd.tailer import (
    Change,
    LineBatch,
    Observed,
    Tailer,
    classify,
    rotation_keys,
    rotation_stamp,
    take_lines,
)
from jobcompd.tailer import watch as tailer_watch
from tests.slurmctld import SlurmctldWriter, mixed_lines, page_filler

LOG = "slurm_jobcomp.log"


# -- helpers --------------------------------------------------------------------------------------


class RecordingLog:
    """The tailer's log lines, kept by structlog's own test processor (nothing is printed)."""

    def __init__(self) -> None:
        self.capture = LogCapture()
        self.logger = structlog.wrap_logger(structlog.PrintLogger(), processors=[self.capture])

    def count(self, text: str, level: str | None = None) -> int:
        return sum(
            text in e["event"] and (level is None or level == e["log_level"]) for e in self.capture.entries
        )


class Harness:
    """Drives a Tailer like the daemon: read, commit the batch's end position, repeat."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        self.options = {"close_rotated_after": 0.5, **options}
        self.db: dict[str, Position] = {}
        self.received: list[bytes] = []
        self.by_file: dict[str, list[bytes]] = defaultdict(list)
        self.batches: list[LineBatch] = []
        self.log = RecordingLog()
        self.tailer: Tailer | None = None
        self.may_start_midway = options.get("start_at") == "end"

    @property
    def t(self) -> Tailer:
        assert self.tailer is not None
        return self.tailer

    def start(self) -> Tailer:
        self.tailer = Tailer(
            self.path, lookup=self.db.get, known=lambda: list(self.db.items()),
            logger=self.log.logger, **self.options,
        )
        self.tailer.start()
        return self.tailer

    def stop(self) -> None:
        if self.tailer is not None:
            self.tailer.stop()
            self.tailer = None

    def commit(self, batch: LineBatch) -> None:
        fp = batch.identity.fingerprint
        prev = self.db.get(fp)
        assert batch.lines and len(batch.lines) == len(batch.offsets)
        if prev is not None:
            assert (batch.offsets[0], batch.first_line_no) == (prev.offset, prev.line_no + 1), (
                f"{batch.path}: batch at {batch.offsets[0]} but committed position {prev.offset}")
        elif not self.may_start_midway:
            assert (batch.offsets[0], batch.first_line_no) == (0, 1), batch.path
        for i, line in enumerate(batch.lines[:-1]):
            assert line.endswith(b"\n")
            assert batch.offsets[i + 1] == batch.offsets[i] + len(line)
        last = batch.lines[-1]
        limit = self.options.get("max_line_bytes", 65536) + 1
        if last.endswith(b"\n") and len(last) <= limit:
            assert batch.end_offset == batch.offsets[-1] + len(last)
        else:
            assert batch.end_offset > batch.offsets[-1]
        assert batch.end_line_no == batch.first_line_no + len(batch.lines) - 1
        self.batches.append(batch)
        self.received.extend(batch.lines)
        self.by_file[fp].extend(batch.lines)
        self.db[fp] = Position(batch.identity.key, batch.path, fp, batch.end_offset, batch.end_line_no, updated_at=time.time())

    def step(self, timeout: float = 0.05) -> LineBatch | None:
        batch = self.t.read(timeout)
        if batch is not None:
            self.commit(batch)
        return batch

    def read_until(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, f"timed out with {len(self.received)} lines"
            self.step()

    def wait_lines(self, count: int) -> None:
        self.read_until(lambda: len(self.received) >= count)
        assert len(self.received) == count

    def settle(self, quiet: float = 0.3, timeout: float = 10.0) -> None:
        """Read until nothing came for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        last = time.monotonic()
        while time.monotonic() - last < quiet:
            assert time.monotonic() < deadline
            if self.step(0.05) is not None:
                last = time.monotonic()


class Pool:
    """Unique, realistic lines, handed out in order."""

    def __init__(self, seed: int = 1) -> None:
        self._lines: Iterator[bytes] = iter(mixed_lines(3000, seed=seed))

    def take(self, count: int) -> list[bytes]:
        return [next(self._lines) for _ in range(count)]


@pytest.fixture
def pool() -> Pool:
    return Pool()


@pytest.fixture
def log(tmp_path: Path) -> Path:
    return tmp_path / LOG


@pytest.fixture
def harness() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(path: Path, **options: Any) -> Harness:
        h = Harness(path, **options)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def join(lines: list[bytes]) -> bytes:
    return b"".join(lines)


def lines_on_disk(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    elif data[:3] == b"BZh":
        data = bz2.decompress(data)
    elif data[:6] == b"\xfd7zXZ\x00":
        data = lzma.decompress(data)
    return data.splitlines(keepends=True)


def assert_exactly_once(h: Harness, directory: Path) -> None:
    """Every line of every file in ``directory`` was received once, in file order; nothing else."""
    expected: dict[str, list[bytes]] = {}
    for path in sorted(directory.iterdir()):
        lines = lines_on_disk(path)
        if lines:
            expected.setdefault(fingerprint(lines[0], 65536), lines)
    for fp, lines in expected.items():
        got = h.by_file.get(fp, [])
        same = next((i for i, (a, b) in enumerate(zip(got, lines, strict=False)) if a != b),
                    min(len(got), len(lines)))
        assert got == lines, f"{fp}: {len(got)} received, {len(lines)} on disk, same up to {same}"
    assert set(h.by_file) <= set(expected)
    assert len(h.received) == sum(len(v) for v in expected.values())


def rotate(path: Path, *, dated: str | None = None) -> Path:
    """logrotate ``create``: shift NAME.N(.gz), rename NAME away, create an empty NAME."""
    if dated is not None:
        target = path.with_name(f"{path.name}-{dated}")
    else:
        numbered = []
        for p in path.parent.iterdir():
            stamp = rotation_stamp(path.name, p.name)
            if isinstance(stamp, int):
                numbered.append((stamp, p))
        for n, p in sorted(numbered, key=lambda x: x[0], reverse=True):
            os.rename(p, p.with_name(p.name.replace(f".{n}", f".{n + 1}", 1)))
        target = path.with_name(f"{path.name}.1")
    os.rename(path, target)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    return target


def compress(path: Path, kind: str = "gz") -> Path:
    """logrotate ``compress``: gzip (or bzip2, xz) the rotated file, then remove it."""
    target = path.with_name(f"{path.name}.{kind}")
    opener = {"gz": gzip.open, "bz2": bz2.open, "xz": lzma.open}[kind]
    with open(path, "rb") as src, opener(target, "wb") as dst:
        shutil.copyfileobj(src, dst)
    path.unlink()
    return target


# -- the pure core --------------------------------------------------------------------------------


def test_take_lines_stops_at_a_partial_line_and_before_an_overlong_one() -> None:
    got = take_lines(b"ab\ncd\nef", 10, max_lines=10, max_line_bytes=5)
    assert (got.lines, got.offsets, got.end, got.overlong) == ([b"ab\n", b"cd\n"], [10, 13], 16,
                                                               False)
    # max_line_bytes + 1 bytes with the newline is still taken whole; one more is over-long
    assert take_lines(b"abcde\n", 0, max_lines=9, max_line_bytes=5).lines == [b"abcde\n"]
    long = take_lines(b"ab\nabcdef\nx\n", 0, max_lines=9, max_line_bytes=5)
    assert (long.lines, long.end, long.overlong) == ([b"ab\n"], 3, True)
    assert take_lines(b"abcdef", 0, max_lines=9, max_line_bytes=5).overlong
    assert not take_lines(b"abcde", 0, max_lines=9, max_line_bytes=5).overlong
    # a "\r\n" ending, which the parser leaves out of the limit as well, counts for nothing
    assert take_lines(b"abcde\r\nx\n", 0, max_lines=9, max_line_bytes=5).lines == [b"abcde\r\n", b"x\n"]
    assert take_lines(b"abcdef\r\n", 0, max_lines=9, max_line_bytes=5).overlong
    assert take_lines(b"abcd\rf\n", 0, max_lines=9, max_line_bytes=5).overlong
    assert not take_lines(b"abcde\r", 0, max_lines=9, max_line_bytes=5).overlong  # its "\n" may come
    assert take_lines(b"abcdef", 0, max_lines=9, max_line_bytes=5).overlong
    assert take_lines(b"a\nb\nc\n", 0, max_lines=2, max_line_bytes=5).lines == [b"a\n", b"b\n"]


@given(
    st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), max_size=12),
    st.sampled_from([b"", b"partial", b"\r", b"abc\r"]),
    st.integers(1, 8),
    st.integers(1, 10),
)
def test_take_lines_takes_a_prefix_of_whole_lines(
    parts: list[bytes], tail: bytes, max_lines: int, max_line_bytes: int
) -> None:
    data = b"".join(p + b"\n" for p in parts) + tail
    got = take_lines(data, 7, max_lines=max_lines, max_line_bytes=max_line_bytes)
    assert b"".join(got.lines) == data[: got.end - 7]
    assert len(got.lines) <= max_lines
    assert all(line.endswith(b"\n") and len(line.removesuffix(b"\n").removesuffix(b"\r")) <= max_line_bytes
               for line in got.lines)
    assert got.offsets == [7 + sum(len(x) for x in got.lines[:i]) for i in range(len(got.lines))]
    rest = data[got.end - 7 :]
    if len(got.lines) < max_lines:
        nl = rest.find(b"\n")
        # the partial line can still end within the limit only as its content and then "\r\n"
        could_fit = len(rest) <= max_line_bytes or (len(rest) == max_line_bytes + 1 and rest.endswith(b"\r"))
        if got.overlong:
            first = rest[: nl + 1]
            assert (nl < 0 and not could_fit) or (
                nl >= 0 and len(first.removesuffix(b"\n").removesuffix(b"\r")) > max_line_bytes)
        else:
            assert nl < 0 and could_fit


def test_classify_is_one_switch_over_stat_results() -> None:
    def seen(**kw: Any) -> Observed:
        return Observed(**{"dev": 1, "inode": 7, "links": 1, "size": 100, "offset": 100, **kw})

    assert classify(None, None) is Change.NONE
    assert classify(None, (1, 7)) is Change.CREATE
    assert classify(seen(), (1, 7)) is Change.NONE
    assert classify(seen(size=120), (1, 7)) is Change.WRITE
    assert classify(seen(size=50), (1, 7)) is Change.TRUNCATE
    assert classify(seen(size=150, first_line_changed=True), (1, 7)) is Change.TRUNCATE
    assert classify(seen(), (1, 8)) is Change.RENAME
    assert classify(seen(), None) is Change.RENAME
    assert classify(seen(links=0), None) is Change.DELETE
    assert classify(seen(links=0), (1, 8)) is Change.DELETE


def test_rotated_names_and_their_order() -> None:
    base = "slurm_jobcomp.log"
    assert rotation_stamp(base, base + ".1") == 1
    assert rotation_stamp(base, base + ".12.gz") == 12
    assert rotation_stamp(base, base + "-20241124") == "20241124"
    assert rotation_stamp(base, base + "-20241124.gz") == "20241124"
    assert rotation_stamp(base, base + "-2024-11-24-13.xz") == "2024112413"
    for other in (base, base + ".swp", base + ".1.tmp", "other.log.1", base + "x.1"):
        assert rotation_stamp(base, other) is None
    keys = rotation_keys([1, 3, 2], [5.0, 9.0, 1.0])
    assert sorted(range(3), key=keys.__getitem__) == [1, 2, 0]  # .3, .2, .1: names win
    keys = rotation_keys(["20241124", "20241123"], [1.0, 2.0])
    assert keys[1] < keys[0]
    keys = rotation_keys([1, "20241123"], [2.0, 1.0])  # a mix: mtimes decide
    assert keys[1] < keys[0]


# -- appends --------------------------------------------------------------------------------------


def test_wake_ends_a_waiting_read_at_once_and_loses_nothing(log: Path, pool: Pool, harness) -> None:
    h = harness(log)
    h.start()
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(h.t.read(30.0)))
    began = time.monotonic()
    waiter.start()
    time.sleep(0.3)  # waiting for lines that do not come
    h.t.wake()
    waiter.join(timeout=5)
    assert not waiter.is_alive() and got == [None]
    assert time.monotonic() - began < 5  # not the 30 s it was given
    lines = pool.take(3)
    with SlurmctldWriter(log) as w:
        w.write(join(lines))
    h.wait_lines(3)  # the next reads go on as before
    assert h.received == lines


def counted_looks(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """When each look at the log (``Tailer._poll_once``) is made from now on."""
    looks: list[float] = []
    poll_once = Tailer._poll_once

    def counted(self: Tailer) -> LineBatch | None:
        looks.append(time.monotonic())
        return poll_once(self)

    monkeypatch.setattr(Tailer, "_poll_once", counted)
    return looks


def test_a_quiet_read_looks_at_the_log_once_per_recheck(
    log: Path, pool: Pool, harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An idle daemon reads with a timeout again and again: each read looks at the file at each
    recheck within it, not once more at its end, right before the next read's. (A read that begins
    after a look that read everything waits for an event or the recheck: the next test.)"""
    lines = pool.take(2)
    with SlurmctldWriter(log) as w:
        w.write(join(lines))
        h = harness(log, recheck_interval=0.2)
        h.start()
        h.wait_lines(2)
        looks = counted_looks(monkeypatch)
        for _ in range(3):
            assert h.t.read(0.5) is None  # a look at 0.2 and 0.4 s
        assert 3 <= len(looks) <= 9, looks  # (a late wake-up may leave one out; 12 before)
        w.write(join(pool.take(1)))
        h.wait_lines(3)  # and what comes is read


@pytest.mark.parametrize("poll", [False, True], ids=["inotify", "polling"])
def test_after_a_look_that_read_everything_a_read_waits_for_a_write_to_look(
    log: Path, pool: Pool, harness, monkeypatch: pytest.MonkeyPatch, poll: bool
) -> None:
    """A trickle is read a line at a time. Once a look has read the log to its end, the log cannot
    change without an inotify event, so the next read waits for one before it looks (it looked at
    once, for nothing, every time) — and what is written is read at once, not at the recheck.
    Polling (NFS) has no such events: there a read looks when it begins, as before."""
    lines = pool.take(4)
    with SlurmctldWriter(log) as w:
        w.write(lines[0])
        h = harness(log, recheck_interval=30.0, poll=poll)
        h.start()
        h.wait_lines(1)
        looks = counted_looks(monkeypatch)
        assert h.t.read(0) is None
        assert h.t.read(0.1) is None
        assert len(looks) == (2 if poll else 0), looks
        for line in lines[1:]:
            w.write(line)
            started = time.monotonic()
            batch = h.step(10.0)
            assert batch is not None and batch.lines == [line]
            assert time.monotonic() - started < 5.0  # (polling: the observer's second)


def test_inotify_events_that_cannot_be_read_turn_the_watch_to_polling(
    log: Path, pool: Pool, harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of inotify's events that fails (never seen) would fail again at each wait, the
    descriptor still readable: the reader would loop on it, a warning each time. It is said once,
    the directory is watched by polling from then on, and the lines written after are read."""
    lines = pool.take(3)
    with SlurmctldWriter(log) as w:
        w.write(lines[0])
        h = harness(log, recheck_interval=30.0)
        h.start()
        h.wait_lines(1)

        def unreadable(self: object, written: bytes, wake: object) -> None:
            raise OSError(errno.EIO, os.strerror(errno.EIO))

        monkeypatch.setattr(tailer_watch._InotifyHere, "dispatch", unreadable)
        w.write(lines[1])  # its event cannot be read
        h.wait_lines(2)
        looks = counted_looks(monkeypatch)
        assert h.t.read(0.5) is None
        assert len(looks) <= 5, len(looks)  # the polling observer's second, not a loop
        w.write(lines[2])
        h.wait_lines(3)
    assert h.received == lines
    assert h.log.count("cannot read inotify's events", "warning") == 1


def test_once_events_tell_every_change_the_clock_looks_every_quiet_recheck(
    log: Path, pool: Pool, harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While a look cannot count on events (here: before the log exists), the clock looks every
    ``recheck_interval``. Once a look has read everything and inotify watches, a look by the clock
    is only a safety net: every ``quiet_recheck`` (the daemon's: 10 s against 2)."""
    h = harness(log, recheck_interval=0.1, quiet_recheck=30.0)
    h.start()
    looks = counted_looks(monkeypatch)
    assert h.t.read(0.5) is None
    assert len(looks) >= 3, looks  # no log: at 0, 0.1, 0.2 … s
    with SlurmctldWriter(log) as w:
        w.write(join(pool.take(2)))
        h.wait_lines(2)
        h.settle()  # the events of the writes, and the look at once after the log was opened
        looks.clear()
        for _ in range(3):
            assert h.t.read(0.5) is None
        assert looks == [], looks


def test_the_recheck_counts_from_the_last_look_across_reads(
    tmp_path: Path, pool: Pool, harness
) -> None:
    """A write can make no event in the log's directory: one through a hard link in another
    directory is reported in that one. The clock's look finds it, and it counts from the last look,
    not from each read's start: a caller whose reads are all shorter than the recheck (the daemon
    reads 5 s at most, and rechecks a quiet log every 10 s) still gets one."""
    log = tmp_path / "logs" / LOG
    log.parent.mkdir()
    (tmp_path / "elsewhere").mkdir()
    with SlurmctldWriter(log) as w:
        w.write(join(pool.take(2)))
    h = harness(log, recheck_interval=1.5)
    h.start()
    h.wait_lines(2)
    alias = tmp_path / "elsewhere" / "alias.log"
    os.link(log, alias)
    line = pool.take(1)[0]
    with SlurmctldWriter(alias) as w:
        w.write(line)
        started = time.monotonic()
        while not h.received[2:]:
            assert h.step(0.5) is None or h.received[2:] == [line]
            assert time.monotonic() - started < 10, "never looked: each read waited for an event"
    assert h.received[2:] == [line]


def test_a_log_that_is_a_symbolic_link_is_woken_by_its_targets_events(
    tmp_path: Path, pool: Pool, harness
) -> None:
    """``JobCompLoc`` may be a symbolic link to a file elsewhere. A write to that file makes an
    event in the target's directory, none in the link's: both are watched. A link pointed at
    another file is followed to it, and that file's directory is watched from then on."""
    for name in ("logs", "data", "moved"):
        (tmp_path / name).mkdir()
    link = tmp_path / "logs" / LOG
    first = tmp_path / "data" / "jobcomp-2026.log"
    link.symlink_to(first)
    h = harness(link, recheck_interval=30.0)  # only events can wake read() in time
    with SlurmctldWriter(first) as w:
        w.write(join(pool.take(1)))
        h.start()
        h.wait_lines(1)
        for line in pool.take(2):
            assert_woken_by_write(h, w, line)
    second = tmp_path / "moved" / LOG
    with SlurmctldWriter(second) as w:
        w.write(join(pool.take(1)))
        swap = link.with_name("swap")
        swap.symlink_to(second)
        os.replace(swap, link)  # the link's directory has the event
        h.wait_lines(4)
        for line in pool.take(2):
            assert_woken_by_write(h, w, line)
    assert h.received == lines_on_disk(first) + lines_on_disk(second)


def test_a_log_opened_in_a_look_is_read_on_without_waiting(
    log: Path, pool: Pool, harness
) -> None:
    """A log that appears with more lines than a batch holds is opened and read in the same look;
    its size was not known to that look, so the next read looks at once for the rest instead of
    waiting for an event that already came (here: 30 s, the recheck)."""
    lines = pool.take(12)
    h = harness(log, recheck_interval=30.0, max_batch_lines=5)
    h.start()
    assert h.step(0) is None  # waiting for the log
    log.write_bytes(join(lines))
    time.sleep(0.3)  # its events are in: the look below clears them
    for count in (5, 10, 12):
        batch = h.step(10.0)
        assert batch is not None and len(h.received) == count
    assert h.received == lines


def test_appends_single_lines_bursts_and_a_partial_line(log: Path, pool: Pool, harness) -> None:
    h = harness(log, max_batch_lines=100)
    with SlurmctldWriter(log) as w:
        h.start()
        one = pool.take(1)
        w.write(one[0])
        h.wait_lines(1)
        burst = pool.take(500)
        w.write(join(burst))
        h.wait_lines(501)
        partial = pool.take(1)[0]
        w.write(partial[:40])
        h.settle(0.3)
        assert len(h.received) == 501  # a line without its newline waits
        w.write(partial[40:])
        h.wait_lines(502)
    assert h.received == one + burst + [partial]
    assert max(len(b.lines) for b in h.batches) == 100
    assert h.batches[-1].end_offset == log.stat().st_size
    assert h.batches[-1].end_line_no == 502


def test_a_line_written_after_the_look_at_the_size_is_read_at_the_next_look(
    log: Path, pool: Pool, harness
) -> None:
    # A trickle's read asks for the bytes fstat saw (not CHUNK); a line written between that look
    # and the read is left for the next look, which its own event brings at once.
    h = harness(log, recheck_interval=30.0)
    first, second, third = pool.take(3)
    with SlurmctldWriter(log) as w:
        h.start()
        w.write(first)
        h.wait_lines(1)
        reader = h.t._current.reader  # type: ignore[union-attr]
        real_pread = reader.pread
        writes = [third]

        def pread(offset: int, size: int) -> bytes:
            if writes:
                w.write(writes.pop())  # after fstat, before the read
            return real_pread(offset, size)

        reader.pread = pread  # type: ignore[method-assign]
        w.write(second)
        batch = h.t.read(10.0)
        assert batch is not None and batch.lines == [second]
        h.commit(batch)
        started = time.monotonic()
        h.wait_lines(3)
        assert time.monotonic() - started < 2.0
    assert h.received == [first, second, third]


def assert_woken_by_write(h: Harness, w: SlurmctldWriter, line: bytes) -> None:
    """``line`` written 0.2 s into a read() of up to 10 s: read() returns it well before its
    re-check (the caller set a long one), woken by the directory watch."""
    timer = threading.Timer(0.2, w.write, (line,))
    started = time.monotonic()
    timer.start()
    batch = h.t.read(10.0)
    timer.join()
    assert batch is not None and batch.lines == [line]
    assert time.monotonic() - started - 0.2 < 2.0
    h.commit(batch)


def test_a_written_line_wakes_read_by_its_event(log: Path, pool: Pool, harness) -> None:
    # No periodic re-check within the test: only the watchdog event can wake read() in time.
    h = harness(log, recheck_interval=30.0)
    with SlurmctldWriter(log) as w:
        h.start()
        for line in pool.take(3):
            assert_woken_by_write(h, w, line)


def test_start_at_end_skips_what_is_there_once(log: Path, pool: Pool, harness) -> None:
    before = pool.take(10)
    in_progress = pool.take(1)[0]
    with SlurmctldWriter(log) as w:
        w.write(join(before) + in_progress[:30])
        h = harness(log, start_at="end")
        h.start()
        assert h.t.read(0.3) is None
        assert h.t.status().offset == len(join(before))
        w.write(in_progress[30:])
        after = pool.take(3)
        w.write(join(after))
        h.wait_lines(4)
        assert h.received == [in_progress, *after]
        assert h.batches[0].first_line_no == 11
        h.stop()
        while_stopped = pool.take(2)
        w.write(join(while_stopped))
        h.start()  # positions are stored now: start_at no longer applies
        h.wait_lines(6)
    assert h.received[4:] == while_stopped


def test_status_reports_lag_and_the_followed_file(log: Path, pool: Pool, harness) -> None:
    h = harness(log)
    with SlurmctldWriter(log) as w:
        w.write(join(pool.take(2)))
        h.start()
        h.wait_lines(2)
        more = join(pool.take(3))
        w.write(more)
        status = h.t.status()
        assert (status.path, status.lag_bytes, status.waiting_for_file) == (str(log), len(more),
                                                                             False)
        assert status.identity == h.batches[0].identity
        h.wait_lines(5)
        assert h.t.status().lag_bytes == 0


# -- rotation -------------------------------------------------------------------------------------


def test_create_rotation_drains_the_old_file_written_through_its_old_descriptor(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    h = harness(log, close_rotated_after=0.5)
    w = SlurmctldWriter(log)
    h.start()
    before = pool.take(20)
    w.write(join(before))
    h.wait_lines(20)
    rotated = rotate(log)
    h.settle(0.2)
    draining = h.t.status().draining
    assert [d.path for d in draining] == [str(rotated)]
    late = pool.take(5)
    for line in late:  # slurmctld has not reopened the path yet
        w.write(line)
    h.wait_lines(25)
    assert {b.path for b in h.batches[-1:]} == {str(rotated)}
    assert h.batches[-1].identity == h.batches[0].identity
    w.reopen()
    after = pool.take(7)
    w.write(join(after))
    h.wait_lines(32)
    w.close()
    assert h.received == before + late + after
    assert h.batches[-1].path == str(log)
    h.read_until(lambda: not h.t.status().draining, timeout=5.0)  # closed once idle
    assert_exactly_once(h, tmp_path)


def test_two_rotations_between_two_reads(tmp_path: Path, log: Path, pool: Pool, harness) -> None:
    h = harness(log)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(5)
    w.write(join(a))
    h.wait_lines(5)
    b, c, d = pool.take(3), pool.take(4), pool.take(2)
    w.write(join(b))
    rotate(log)
    w.reopen()
    w.write(join(c))  # this file is rotated away before the tailer ever sees it
    rotate(log)
    w.reopen()
    w.write(join(d))
    w.close()
    h.settle()
    assert h.received == a + b + c + d
    assert_exactly_once(h, tmp_path)


def test_rotated_file_ending_without_newline_is_delivered_when_closed(
    log: Path, pool: Pool, harness
) -> None:
    h = harness(log, close_rotated_after=0.2)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(3)
    w.write(join(a))
    h.wait_lines(3)
    w.write(b"JobId=77 UserId=cut(1) ")  # a record cut short: nothing will complete it
    rotate(log)
    w.reopen()
    c = pool.take(2)
    w.write(join(c))
    w.close()
    h.read_until(lambda: len(h.received) == 6)
    assert h.received == [*a, *c, b"JobId=77 UserId=cut(1) "]
    assert h.log.count("without a newline", "warning") == 1


def test_copytruncate_restarts_at_zero_and_reads_the_rest_from_the_copy(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    h = harness(log)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(10)
    w.write(join(a))
    h.wait_lines(10)
    b = pool.take(5)
    w.write(join(b))  # not read before logrotate copies: the copy holds them
    shutil.copyfile(log, tmp_path / f"{LOG}.1")
    os.truncate(log, 0)
    d = pool.take(40)  # more bytes than were read: only the changed first line tells
    w.write(join(d))
    w.close()
    h.settle()
    assert h.received == a + b + d
    assert h.log.count("log file truncated", "warning") == 1
    assert h.log.count("rest of the truncated log from its copy", "warning") == 1
    assert {x.path for x in h.batches if x.lines[0] in b} == {str(tmp_path / f"{LOG}.1")}
    assert_exactly_once(h, tmp_path)


@pytest.mark.parametrize("read_in_window", [False, True], ids=["unread", "read"])
def test_copytruncate_loses_lines_written_between_copy_and_truncate(
    tmp_path: Path, log: Path, pool: Pool, harness, read_in_window: bool
) -> None:
    """The classic copytruncate loss: lines appended after logrotate's copy and before its
    truncate are in neither file. The tailer still has them if it read them in that window."""
    h = harness(log)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(10)
    w.write(join(a))
    h.wait_lines(10)
    b = pool.take(5)
    w.write(join(b))
    shutil.copyfile(log, tmp_path / f"{LOG}.1")
    window = pool.take(3)
    w.write(join(window))
    if read_in_window:
        h.wait_lines(18)
    os.truncate(log, 0)
    d = pool.take(4)  # fewer bytes than were read: the file shrank below the offset
    w.write(join(d))
    w.close()
    h.settle()
    assert h.received == a + b + (window if read_in_window else []) + d


# -- missing, deleted, replaced -------------------------------------------------------------------


def test_missing_file_is_waited_for_quietly(log: Path, pool: Pool, harness) -> None:
    h = harness(log)
    h.start()
    cpu = time.process_time()
    assert h.t.read(1.0) is None
    assert time.process_time() - cpu < 0.5  # waits on an event, no busy loop
    assert h.t.read(0.2) is None
    assert h.t.status().waiting_for_file
    assert h.log.count("waiting for the log file") == 1
    with SlurmctldWriter(log) as w:
        a = pool.take(3)
        w.write(join(a))
        h.wait_lines(3)
    assert h.received == a
    assert not h.t.status().waiting_for_file


def test_missing_directory_is_waited_for_too(tmp_path: Path, pool: Pool, harness) -> None:
    log = tmp_path / "later" / LOG
    h = harness(log)
    h.start()
    assert h.t.read(0.2) is None
    log.parent.mkdir()
    with SlurmctldWriter(log) as w:
        a = pool.take(2)
        w.write(join(a))
        h.wait_lines(2)
    assert h.received == a


def test_a_deleted_and_recreated_directory_is_watched_again(tmp_path: Path, pool: Pool, harness) -> None:
    log = tmp_path / "slurm" / LOG
    log.parent.mkdir()
    h = harness(log, recheck_interval=0.3)
    h.start()
    with SlurmctldWriter(log) as w:
        a = pool.take(2)
        w.write(join(a))
        h.wait_lines(2)
    shutil.rmtree(log.parent)  # the watch goes with it
    assert h.t.read(0.5) is None
    log.parent.mkdir()
    with SlurmctldWriter(log) as w:
        b = pool.take(2)
        w.write(join(b))
        h.wait_lines(4)  # found by the re-check, which watches the directory again
        h.t._recheck = h.t._quiet_recheck = 30.0  # from now on only an event can wake read() in time
        line = pool.take(1)[0]
        assert_woken_by_write(h, w, line)
    assert h.received == a + b + [line]


def test_deleted_and_recreated_file_is_drained_then_followed(
    log: Path, pool: Pool, harness
) -> None:
    h = harness(log)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(5)
    w.write(join(a))
    h.wait_lines(5)
    b = pool.take(3)
    w.write(join(b))
    log.unlink()
    c = pool.take(2)
    w.write(join(c))  # slurmctld writes on to the deleted file until it reopens
    w.reopen()
    d = pool.take(4)
    w.write(join(d))
    w.close()
    h.settle()
    assert h.received == a + b + c + d
    assert h.log.count("deleted") == 1


def test_same_inode_with_new_content_is_a_new_file(log: Path, pool: Pool, harness) -> None:
    h = harness(log)
    with SlurmctldWriter(log) as w:
        w.write(join(pool.take(5)))
    h.start()
    h.wait_lines(5)
    inode = log.stat().st_ino
    replaced = pool.take(20)  # longer than what was read: only the fingerprint tells
    with open(log, "r+b") as fh:
        fh.truncate(0)
        fh.write(join(replaced))
    assert log.stat().st_ino == inode
    h.settle()
    assert h.received[5:] == replaced

    # The same while stopped: the stored position of the old content must not be applied.
    h.stop()
    again = pool.take(30)
    with open(log, "r+b") as fh:
        fh.truncate(0)
        fh.write(join(again))
    assert log.stat().st_ino == inode
    h.start()
    h.settle()
    assert h.received[25:] == again


def test_inode_reused_after_delete_and_create_while_stopped(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    h = harness(log)
    with SlurmctldWriter(log) as w:
        w.write(join(pool.take(5)))
    h.start()
    h.wait_lines(5)
    h.stop()
    log.unlink()
    fresh = pool.take(8)
    with SlurmctldWriter(log) as w:  # ext4 often hands out the freed inode again
        w.write(join(fresh))
    h.start()
    h.settle()
    assert h.received[5:] == fresh


# -- restarts -------------------------------------------------------------------------------------


def rotate_while_stopped(
    h: Harness, path: Path, pool: Pool, *, dated: str | None = None, compression: str | None = None
) -> list[bytes]:
    """Read 10 lines written to ``path``; stopped, 5 more, logrotate ``create``, 2 more through the
    old descriptor, 6 in the new file; then started again and settled. Every line written, in order."""
    w = SlurmctldWriter(path)
    h.start()
    a = pool.take(10)
    w.write(join(a))
    h.wait_lines(10)
    h.stop()
    b = pool.take(5)
    w.write(join(b))
    rotated = rotate(path, dated=dated)
    late = pool.take(2)
    w.write(join(late))  # through the old descriptor, still while stopped
    w.reopen()
    c = pool.take(6)
    w.write(join(c))
    w.close()
    if compression is not None:
        compress(rotated, compression)
    h.start()
    h.settle()
    return a + b + late + c


@pytest.mark.parametrize(
    "naming", ["numbered", "numbered.gz", "dated", "dated.gz", "numbered.bz2", "dated.xz"])
def test_rotation_while_stopped(tmp_path: Path, log: Path, pool: Pool, harness, naming: str):
    h = harness(log)
    dated = "20241124" if naming.startswith("dated") else None
    written = rotate_while_stopped(h, log, pool, dated=dated, compression=naming.partition(".")[2] or None)
    assert h.received == written
    assert_exactly_once(h, tmp_path)


def test_a_symbolic_links_target_rotated_while_stopped(tmp_path: Path, pool: Pool, harness) -> None:
    """A log reached through a symbolic link is rotated where the file is (logrotate rotates the
    file it is given, and refuses a link): the rotated file, with the lines written while jobcompd
    was stopped, is found beside the link's target."""
    for name in ("logs", "data"):
        (tmp_path / name).mkdir()
    target = tmp_path / "data" / "jobcomp-2026.log"
    link = tmp_path / "logs" / LOG
    link.symlink_to(target)
    h = harness(link)
    assert h.received == rotate_while_stopped(h, target, pool)
    assert_exactly_once(h, tmp_path / "data")


def test_two_rotations_while_stopped_and_old_files_left_alone(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    ancient = tmp_path / f"{LOG}.1.gz"
    with gzip.open(ancient, "wb") as fh:
        fh.write(join(pool.take(4)))
    day_ago = time.time() - 86400
    os.utime(ancient, (day_ago, day_ago))
    h = harness(log)
    w = SlurmctldWriter(log)
    h.start()  # a very first start: the rotated file from before is not read
    a = pool.take(10)
    w.write(join(a))
    h.wait_lines(10)
    h.stop()
    b = pool.take(3)
    w.write(join(b))
    rotate(log)
    w.reopen()
    c = pool.take(4)
    w.write(join(c))
    rotate(log)  # the first file is .2 now, the ancient one .3.gz
    compress(tmp_path / f"{LOG}.2")
    w.reopen()
    d = pool.take(2)
    w.write(join(d))
    w.close()
    h.start()
    h.settle()
    assert h.received == a + b + c + d
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        LOG, f"{LOG}.1", f"{LOG}.2.gz", f"{LOG}.3.gz"]


def test_a_compressed_name_is_not_read_before_it_holds_compressed_bytes(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    # gzip creates NAME.gz before it writes the header: never read such a file as plain text
    h = harness(log)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(3)
    w.write(join(a))
    h.wait_lines(3)
    (tmp_path / f"{LOG}-20241123.gz").write_bytes(b"\x1f\n")  # a header cut short
    rotate(log, dated="20241124")
    w.reopen()
    c = pool.take(2)
    w.write(join(c))
    w.close()
    h.settle()
    assert h.received == a + c


def test_restart_finishes_a_rotated_file_that_was_being_drained(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    h = harness(log, max_batch_lines=4)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(3)
    w.write(join(a))
    h.wait_lines(3)
    b = pool.take(12)
    w.write(join(b))
    rotate(log)
    w.reopen()
    c = pool.take(3)
    w.write(join(c))
    h.wait_lines(7)  # one batch of the rotated file
    h.stop()
    h.start()
    h.settle()
    assert h.received == a + b + c
    assert_exactly_once(h, tmp_path)


# -- options --------------------------------------------------------------------------------------


def test_poll_mode_follows_appends_and_a_rotation(
    tmp_path: Path, log: Path, pool: Pool, harness
) -> None:
    h = harness(log, poll=True, close_rotated_after=0.3)
    w = SlurmctldWriter(log)
    h.start()
    a = pool.take(3)
    w.write(join(a))
    h.wait_lines(3)
    w.write(join(more := pool.take(50)))
    h.wait_lines(53)
    rotate(log)
    late = pool.take(2)
    w.write(join(late))
    w.reopen()
    c = pool.take(4)
    w.write(join(c))
    w.close()
    h.settle()
    assert h.received == a + more + late + c
    assert_exactly_once(h, tmp_path)


def test_overlong_line_is_cut_and_its_rest_skipped(log: Path, pool: Pool, harness) -> None:
    h = harness(log, max_line_bytes=1000)
    long = b"JobId=5 Name=" + b"x" * 300_000 + b"\n"
    with SlurmctldWriter(log) as w:
        h.start()
        n1 = pool.take(2)
        w.write(join(n1) + long[:5000])
        h.wait_lines(2)
        h.settle(0.2)
        assert len(h.received) == 2  # the long line is not over yet
        w.write(long[5000:])
        n2 = pool.take(2)
        w.write(join(n2))
        h.wait_lines(5)
    assert h.received == [*n1, long[:1001], *n2]
    cut = next(b for b in h.batches if b.lines[0] == long[:1001])
    assert cut.lines == [long[:1001]]
    assert cut.offsets == [len(join(n1))]
    assert cut.end_offset == len(join(n1)) + len(long)
    assert h.batches[-1].offsets[0] == cut.end_offset
    assert h.batches[-1].end_line_no == 5


def test_a_longest_line_is_taken_whole_with_either_ending_whatever_the_limit(log: Path, harness) -> None:
    # max_line_bytes above the read size: a line of exactly max_line_bytes still fits in one read
    limit = CHUNK + 100
    crlf = b"JobId=5 Name=" + b"x" * (limit - 13) + b"\r\n"
    lf = b"JobId=6 Name=" + b"y" * (limit - 13) + b"\n"
    over = b"JobId=7 Name=" + b"z" * (limit - 12) + b"\r\n"  # one byte too long: cut
    h = harness(log, max_line_bytes=limit)
    with SlurmctldWriter(log) as w:
        h.start()
        w.write(crlf + lf + over + b"JobId=8\n")
        h.wait_lines(4)
    assert h.received == [crlf, lf, over[: limit + 1], b"JobId=8\n"]


# -- a random model -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
def test_random_writes_rotations_and_restarts_lose_and_duplicate_nothing(
    tmp_path: Path, harness, seed: int
) -> None:
    """Random appends, partial lines, create-mode rotations (with writes to the old descriptor
    and delayed compression), reads and restarts; at the end every line of every file
    was received once, in order. copytruncate is left out: it loses lines by design."""
    rng = random.Random(seed)
    log = tmp_path / LOG
    lines = Pool(seed=100 + seed)
    h = harness(log, close_rotated_after=1.0, max_batch_lines=rng.choice([3, 50, 2000]))
    w = SlurmctldWriter(log)
    written = 0

    def write(count: int) -> None:
        nonlocal written
        w.write(join(lines.take(count)))
        written += count

    h.start()
    write(3)
    h.wait_lines(3)
    running = True
    deadline = time.monotonic() + 2.5
    actions = ["write", "partial", "rotate", "read", "restart"]
    for _ in range(150):
        if time.monotonic() > deadline:
            break
        action = rng.choices(actions, weights=[5, 2, 2, 4, 1])[0]
        if action == "write":
            write(rng.randint(1, 12))
        elif action == "partial":
            line = lines.take(1)[0]
            cut = rng.randrange(1, len(line))
            w.write(line[:cut])
            if running:
                h.step(0.01)
            w.write(line[cut:])
            written += 1
        elif action == "rotate":
            rotate(log)
            if (tmp_path / f"{LOG}.2").exists() and rng.random() < 0.5:
                compress(tmp_path / f"{LOG}.2")  # delaycompress
            for _ in range(rng.randint(0, 3)):
                write(1)  # through the old descriptor
                if running and rng.random() < 0.5:
                    h.step(0.01)
            w.reopen()
        elif action == "read" and running:
            for _ in range(rng.randint(1, 5)):
                h.step(0.01)
        elif action == "restart":
            if running:
                h.stop()
            else:
                h.start()
            running = not running
    w.close()
    if not running:
        h.start()
    h.read_until(lambda: len(h.received) >= written, timeout=15.0)
    h.settle(0.2)
    assert len(h.received) == written
    assert_exactly_once(h, tmp_path)


def test_a_writer_thread_rotating_while_lines_are_read(tmp_path: Path, harness) -> None:
    """The same, with slurmctld and logrotate in another thread: reads race with renames."""
    log = tmp_path / LOG
    lines = Pool(seed=7)
    h = harness(log, close_rotated_after=1.0)
    w = SlurmctldWriter(log)
    h.start()
    written = 0
    done = threading.Event()

    def slurmctld_and_logrotate() -> None:
        nonlocal written
        rng = random.Random(7)
        try:
            for _ in range(12):
                for _ in range(rng.randint(1, 20)):
                    w.write(lines.take(1)[0])
                    written += 1
                    time.sleep(rng.choice([0, 0, 0.001, 0.005]))
                rotate(log)
                if (tmp_path / f"{LOG}.2").exists():
                    compress(tmp_path / f"{LOG}.2")
                for _ in range(rng.randint(0, 3)):
                    w.write(lines.take(1)[0])
                    written += 1
                w.reopen()
        finally:
            done.set()

    thread = threading.Thread(target=slurmctld_and_logrotate)
    thread.start()
    while not done.is_set():
        h.step(0.05)
    thread.join()
    w.close()
    h.read_until(lambda: len(h.received) >= written, timeout=15.0)
    h.settle(0.2)
    assert len(h.received) == written
    assert_exactly_once(h, tmp_path)


def test_an_unfinished_record_waits_for_its_rest_then_for_quiet(tmp_path: Path) -> None:
    from jobcompd.joining import unfinished_tail
    from tests.test_record import real

    log = tmp_path / "jobcomp.log"
    first, rest = real(name=b"line1\nline2").split(b"\n", 1)
    h = Harness(log, hold=unfinished_tail, hold_for=1.0, recheck_interval=0.1)
    with SlurmctldWriter(log) as w:
        w.write(page_filler(0, first + b"\n") + first + b"\n")
        h.start()
        try:
            h.read_until(lambda: len(h.received) == 1)  # the whole line before it
            for _ in range(5):
                assert h.step() is None  # its start waits for the rest …
            w.write(rest)
            h.read_until(lambda: len(h.received) == 3)
            assert h.batches[-1].lines == [first + b"\n", rest]  # … and comes with it
            # A start whose rest never comes is delivered after hold_for of quiet.
            cut = real(jobid=b"7", name=b"a\nb").split(b"\n", 1)[0] + b"\n"
            w.write(page_filler(log.stat().st_size, cut) + cut)
            h.read_until(lambda: len(h.received) == 4)
            began = time.monotonic()
            h.read_until(lambda: len(h.received) == 5, timeout=10)
            assert time.monotonic() - began >= 0.9
            assert h.received[-1] == cut
        finally:
            h.stop()


def test_a_record_start_read_to_the_end_of_a_write_is_not_held(tmp_path: Path) -> None:
    """slurmctld writes a record in one ``write()``, and a reader sees one cut only on a page
    boundary: lines read to the file's end anywhere else hold whole records. A 17.02 record (which
    a newer one cut in its directory looks like) last in the file is read at once, not after the
    next line; so is a record start cut elsewhere than on a page, which no slurmctld writes."""
    from jobcompd.joining import unfinished_tail
    from jobcompd.record import parse_line
    from jobcompd.tailer.followed import WRITE_CUT
    from tests.test_record import real

    log = tmp_path / "jobcomp.log"
    old = next(x for x in mixed_lines(200, seed=3)
               if x.count(b"\n") == 1 and getattr(parse_line(x), "generation", "") == "17.02")
    first, rest = real(name=b"line1\nline2").split(b"\n", 1)
    h = Harness(log, hold=unfinished_tail, hold_for=30.0, recheck_interval=30.0)
    with SlurmctldWriter(log) as w:
        w.write(mixed_lines(1, seed=2)[0])
        h.start()
        try:
            h.read_until(lambda: len(h.received) == 1)
            for line in (old, first + b"\n", rest):
                w.write(line)
                assert log.stat().st_size % WRITE_CUT != 0  # not where a write can be seen cut
                began = time.monotonic()
                batch = h.step(timeout=5.0)
                assert batch is not None and batch.lines == [line]
                assert time.monotonic() - began < 2.0
        finally:
            h.stop()
    assert h.received[1:] == [old, first + b"\n", rest]


def test_a_held_record_start_is_read_as_its_quiet_ends_not_at_the_next_recheck(tmp_path: Path) -> None:
    """One read waiting for lines, as the daemon's does (its recheck interval is 2 s): a record start
    held for its rest is handed over once ``hold_for`` of quiet has passed, not up to a recheck later."""
    from jobcompd.joining import unfinished_tail
    from tests.test_record import real

    log = tmp_path / "jobcomp.log"
    cut = real(jobid=b"7", name=b"a\nb").split(b"\n", 1)[0] + b"\n"
    h = Harness(log, hold=unfinished_tail, hold_for=0.5, recheck_interval=30.0)
    with SlurmctldWriter(log) as w:
        w.write(mixed_lines(1, seed=2)[0])
        h.start()
        try:
            h.read_until(lambda: len(h.received) == 1)
            w.write(page_filler(log.stat().st_size, cut) + cut)
            h.read_until(lambda: len(h.received) == 2)
            began = time.monotonic()
            batch = h.step(timeout=20.0)
            took = time.monotonic() - began
            assert batch is not None and batch.lines == [cut]
            assert 0.45 <= took < 5.0, f"handed over after {took:.2f} s"
        finally:
            h.stop()
