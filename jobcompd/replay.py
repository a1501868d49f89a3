"""``jobcompd replay``: a one-shot backfill of log files through the same durable path as the daemon.

Each file is read in batches of complete lines; every batch is parsed, encoded and committed to
the state together with the read position (one transaction), then the producer worker sends the
spool to Kafka. Running replay again on the same files sends nothing twice:

* a plain file whose first line was seen before resumes from its committed position (the rest is
  not even re-read);
* every record id already spooled, dead-lettered or delivered is skipped (the known ids), so
  a gzip-compressed copy, stdin, or a file that was rotated and renamed is safe to replay too.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import queue
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

import structlog

from jobcompd.config.settings import DEFAULT_MAX_SPOOL_RECORDS
from jobcompd.identity import REPLAY, Position, fingerprint, position_key
from jobcompd.ingest import Ingestor, ReadAhead, read_batches
from jobcompd.logfile import BATCH_LINES, is_compressed, open_log, raw_offset
from jobcompd.producer import Sender, SenderThread
from jobcompd.state import State, StateError
from jobcompd.wakeup import Wakeup

__all__ = ["ReplaySummary", "Replayer"]

_STDIN = "-"


@dataclass(slots=True)
class ReplaySummary:
    """What one replay did; ``complete`` is true when everything read was delivered."""

    files: int = 0
    lines: int = 0
    records: int = 0
    already_known: int = 0
    quarantined: int = 0
    produced: int = 0  # records handed to librdkafka (a record produced again counts again)
    delivered: int = 0
    dead_lettered: int = 0
    left_in_spool: int = 0
    skipped_bytes: int = 0
    interrupted: bool = False

    @property
    def complete(self) -> bool:
        return not (self.quarantined or self.dead_lettered or self.left_in_spool or self.interrupted)

    def lines_text(self) -> list[str]:
        return [
            f"files:          {self.files}",
            f"lines read:     {self.lines}"
            + (f" (+{self.skipped_bytes} bytes skipped, read before)" if self.skipped_bytes else ""),
            f"records:        {self.records} new, {self.already_known} already known (not resent)",
            f"delivered:      {self.delivered}",
            f"quarantined:    {self.quarantined}" + (" (see: jobcompd status)" if self.quarantined else ""),
            f"dead-lettered:  {self.dead_lettered}"
            + (" (see: jobcompd deadletter list)" if self.dead_lettered else ""),
            f"left in spool:  {self.left_in_spool}",
        ]


class _Progress:
    """A one-line progress display on a terminal: records/s and ETA by bytes."""

    def __init__(self, stream: TextIO, total_bytes: int) -> None:
        self._stream = stream
        self._total = total_bytes
        self._start = time.monotonic()
        self._last = 0.0

    def show(self, done_bytes: int, records: int, delivered: int, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.25:
            return
        self._last = now
        elapsed = max(now - self._start, 1e-6)
        rate = delivered / elapsed
        eta = ""
        if self._total and done_bytes:
            remaining = elapsed * (self._total - done_bytes) / done_bytes
            eta = f" ETA {int(remaining // 60)}:{int(remaining % 60):02d}"
        pct = f"{100 * done_bytes / self._total:5.1f}% " if self._total else ""
        self._stream.write(f"\r{pct}read {records} delivered {delivered} ({rate:,.0f} rec/s){eta}   ")
        self._stream.flush()

    def end(self) -> None:
        self._stream.write("\n")
        self._stream.flush()


class Replayer:
    """Reads files into the state while a sender thread delivers, until the spool is empty.

    Threads, as ``jobcompd run``'s: the caller's reads each file and commits its batches in
    order (:class:`ReadAhead`); the parse thread parses big batches and, while Kafka acknowledges
    records as they go, sends their records at once (the caller commits such a batch once they
    were acknowledged, as delivered: never spooled); the sender thread sends the rest of the spool
    and settles delivery reports.
    """

    def __init__(
        self,
        state: State,
        ingestor: Ingestor,
        sender: Sender,
        *,
        max_spool_records: int = DEFAULT_MAX_SPOOL_RECORDS,
        progress: TextIO | None = None,
        stop: Wakeup | None = None,
    ) -> None:
        self._state = state
        self._ingestor = ingestor
        self._sender = sender
        self._max_spool = max_spool_records
        self._progress_stream = progress
        self._stop = stop or Wakeup()
        self._log = structlog.get_logger("jobcompd.replay")
        self.summary = ReplaySummary()
        self._depth_before = self._left_before = 0

    def run(self, names: list[str]) -> ReplaySummary:
        """Replay ``names`` (paths, ``.gz`` files, ``-`` for stdin) and wait for delivery."""
        total = sum(os.path.getsize(n) for n in names if n != _STDIN and os.path.exists(n))
        progress = _Progress(self._progress_stream, total) if self._progress_stream else None
        done_before = 0
        sender = self._sender
        counters = sender.counters
        dead_before = counters.dead_lettered
        delivered_before = counters.delivered
        produced_before = counters.produced
        # What the spool held at the start, and what this replay took out of it since (below).
        self._depth_before = self._state.spool_depth()
        self._left_before = delivered_before + dead_before
        thread = SenderThread(sender, structlog.get_logger("jobcompd.producer"))
        self._ingestor.send = thread.send_parsed
        thread.start()

        def show(done: int, *, force: bool = False) -> None:
            if progress:
                progress.show(done, self.summary.records, counters.delivered - delivered_before, force=force)

        try:
            for name in names:
                if self._stop.is_set():
                    break
                self.summary.files += 1
                # (closed at once if the loop ends early: the batches held are committed now)
                with contextlib.closing(self._read_file(name, thread)) as reading:
                    for consumed in reading:
                        self._wait_while_full(thread)
                        show(done_before + consumed)
                if name != _STDIN and os.path.exists(name):
                    done_before += os.path.getsize(name)
            while not self._stop.is_set() and not self._call(thread, sender.idle):
                self._stop.wait(0.05)
                show(done_before)
        finally:
            self._ingestor.send = None
            show(done_before, force=True)
            if progress:
                progress.end()
            thread.stop()
            thread.join()
        if thread.error is not None:
            raise thread.error
        self.summary.interrupted = self._stop.is_set()
        self.summary.left_in_spool = thread.left_in_spool
        self.summary.delivered = counters.delivered - delivered_before
        self.summary.produced = counters.produced - produced_before
        self.summary.dead_lettered = counters.dead_lettered - dead_before
        return self.summary

    @staticmethod
    def _alive(thread: SenderThread) -> None:
        """Raise the sender thread's error if it stopped (reading on would be for nothing)."""
        if not thread.is_alive():
            raise thread.error or RuntimeError("the sender thread stopped")

    def _call(self, thread: SenderThread, fn: Callable[[], bool]) -> bool:
        """``fn()`` on the sender thread; its error if it stopped (meanwhile, too)."""
        while True:
            self._alive(thread)
            with contextlib.suppress(queue.Empty):
                return bool(thread.call(fn, timeout=1.0))

    def _wait_while_full(self, thread: SenderThread) -> None:
        """Backpressure: past ``max_spool_records``, wait for the sender before reading more. The
        spool's depth is looked up only once what this replay spooled, and has not seen leave it,
        may bring it there."""
        self._alive(thread)
        counters = self._sender.counters
        left = counters.delivered + counters.dead_lettered - self._left_before
        if self._depth_before + self.summary.records - left <= self._max_spool:
            return
        while not self._stop.is_set() and self._state.spool_depth() > self._max_spool:
            self._alive(thread)
            self._stop.wait(0.1)

    def _commit(self, ahead: ReadAhead, thread: SenderThread) -> None:
        """Commit the oldest batch held, count it, and hand its new records to the sender."""
        read = len(ahead.head.prepared.lines)
        result = ahead.commit()
        self.summary.lines += read
        self.summary.records += result.spooled
        self.summary.already_known += result.already_known
        self.summary.quarantined += result.quarantined
        thread.offer(result.fresh, size=result.fresh_bytes)

    def _commit_held(self, ahead: ReadAhead, thread: SenderThread) -> None:
        """At a stop: commit the batches read and held, whose records may be in Kafka already
        (sent as they were parsed), so that they are not sent again by the next replay."""
        try:
            while ahead:
                if ahead.head.prepared.handed:
                    ahead.await_reports(thread.sender, lambda: False, lambda: True)
                self._commit(ahead, thread)
        except StateError as exc:  # (what is not committed is read again next time)
            self._log.error("cannot commit the batches held", error=str(exc))

    def _read_file(self, name: str, thread: SenderThread) -> Generator[int, None, None]:
        """Read one file in committed batches; yield the compressed bytes consumed so far."""
        label = "<stdin>" if name == _STDIN else str(Path(name).resolve())
        fh = open_log(name)
        gz = is_compressed(fh)
        try:
            first = fh.readline()
            if not first:
                return
            key = None
            offset = line_no = 0
            if name != _STDIN:
                fp = fingerprint(first, self._ingestor.max_line_bytes)
                key = position_key(REPLAY, fp)
                known = self._state.position(key)
                if known is not None and known.offset > 0:
                    offset, line_no = known.offset, known.line_no
                    self.summary.skipped_bytes += offset
            if offset:
                if gz:
                    _skip(fh, offset)
                else:
                    fh.seek(offset)
                pending: list[bytes] = []
            else:
                pending = [first]
            st = os.fstat(fh.fileno()) if name != _STDIN else None
            batches = read_batches(
                itertools.chain(pending, fh),  # type: ignore[arg-type]
                BATCH_LINES,
                unfinished=self._ingestor.unfinished,
            )
            ahead = ReadAhead(self._ingestor, self._state)

            def read_more() -> bool:
                """Read the next batch and hand it to the parse thread; whether there was one."""
                nonlocal offset, line_no
                lines = next(batches, None)
                if not lines:
                    return False
                consumed = sum(map(len, lines))
                position = None
                if key is not None:
                    position = Position(
                        key=key,
                        path=label,
                        fingerprint=fp,
                        offset=offset + consumed,
                        line_no=line_no + len(lines),
                        inode=st.st_ino if st else 0,
                        dev=st.st_dev if st else 0,
                    )
                ahead.add(lines, source=label, position=position, first_line_no=line_no + 1,
                          first_offset=offset)
                offset += consumed
                line_no += len(lines)
                return True

            halted = self._stop.is_set
            try:
                while not halted() and (ahead or read_more()):
                    # Batch n+1 is parsed (and its records sent) while batch n waits for Kafka's
                    # reports and is committed.
                    if ahead.head.prepared.handed:
                        if len(ahead) == 1:
                            read_more()
                        ahead.await_reports(thread.sender, read_more, halted)
                    self._commit(ahead, thread)
                    yield raw_offset(fh) if name != _STDIN else 0
            finally:
                # Stopped: the batches read are committed (their records may be in Kafka already).
                self._commit_held(ahead, thread)
        finally:
            if name != _STDIN:
                fh.close()


def _skip(fh: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = fh.read(min(count, io.DEFAULT_BUFFER_SIZE * 16))
        if not chunk:
            return
        count -= len(chunk)
