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

import collections
import io
import itertools
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from jobcompd.config.settings import DEFAULT_MAX_SPOOL_RECORDS
from jobcompd.identity import REPLAY, Position, fingerprint, position_key
from jobcompd.ingest import Ingestor, Queued, read_batches
from jobcompd.logfile import BATCH_LINES, is_compressed, open_log, raw_offset
from jobcompd.producer import Sender
from jobcompd.state import BatchResult, State
from jobcompd.wakeup import Wakeup

__all__ = ["ReplaySummary", "Replayer"]

_STDIN = "-"

_COMMITS_AHEAD = 2
"""Batches read and handed to the commit thread before the oldest one's records are sent."""


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
    """Reads files into the state and drives the sender until the spool is empty."""

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
        self.summary = ReplaySummary()
        self._depth_before = self._left_before = 0

    def run(self, names: list[str]) -> ReplaySummary:
        """Replay ``names`` (paths, ``.gz`` files, ``-`` for stdin) and wait for delivery."""
        total = sum(os.path.getsize(n) for n in names if n != _STDIN and os.path.exists(n))
        progress = _Progress(self._progress_stream, total) if self._progress_stream else None
        done_before = 0
        sender = self._sender
        dead_before = sender.counters.dead_lettered
        delivered_before = sender.counters.delivered
        produced_before = sender.counters.produced
        # What the spool held at the start, and what this replay took out of it since (below).
        self._depth_before = self._state.spool_depth()
        self._left_before = delivered_before + dead_before
        try:
            for name in names:
                if self._stop.is_set():
                    break
                self.summary.files += 1
                for consumed in self._read_file(name):
                    self._send_while_full(progress, done_before + consumed)
                    sender.pump(0)
                    if progress:
                        progress.show(
                            done_before + consumed,
                            self.summary.records,
                            sender.counters.delivered - delivered_before,
                        )
                    if self._stop.is_set():
                        break
                if name != _STDIN and os.path.exists(name):
                    done_before += os.path.getsize(name)
            sender.wake()
            while not self._stop.is_set() and not sender.idle():
                sender.pump(0.1)
                if progress:
                    progress.show(
                        done_before,
                        self.summary.records,
                        sender.counters.delivered - delivered_before,
                    )
        finally:
            if progress:
                progress.show(
                    done_before,
                    self.summary.records,
                    sender.counters.delivered - delivered_before,
                    force=True,
                )
                progress.end()
        self.summary.interrupted = self._stop.is_set()
        self.summary.left_in_spool = sender.close()
        self.summary.delivered = sender.counters.delivered - delivered_before
        self.summary.produced = sender.counters.produced - produced_before
        self.summary.dead_lettered = sender.counters.dead_lettered - dead_before
        return self.summary

    def _send_while_full(self, progress: _Progress | None, done: int) -> None:
        """Backpressure: past ``max_spool_records``, send before reading more. The spool's depth is
        looked up only once what this replay spooled, and has not seen leave it, may bring it
        there: the look-up waits while a batch is committed."""
        counters = self._sender.counters
        left = counters.delivered + counters.dead_lettered - self._left_before
        if self._depth_before + self.summary.records - left <= self._max_spool:
            return
        while not self._stop.is_set() and self._state.spool_depth() > self._max_spool:
            self._sender.pump(0.1)

    def _committed(self, commits: _Committer) -> tuple[int, BatchResult]:
        """The oldest batch's commit, serving delivery reports while it is not done."""
        oldest = commits.oldest()
        while not oldest.done():
            self._sender.pump(0.002)
        return commits.take()

    def _count(self, read: int, result: BatchResult) -> None:
        self.summary.lines += read
        self.summary.records += result.spooled
        self.summary.already_known += result.already_known
        self.summary.quarantined += result.quarantined

    def _read_file(self, name: str) -> Iterator[int]:
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
            # Batch n+2 is parsed (on the parse thread) while batch n+1 is committed (on the
            # commit thread: SQLite lets the interpreter go meanwhile) and batch n is sent.
            commits = _Committer(self._ingestor)
            batches = read_batches(
                itertools.chain(pending, fh),  # type: ignore[arg-type]
                BATCH_LINES,
                unfinished=self._ingestor.unfinished,
            )
            try:
                while True:
                    lines = next(batches, None)
                    if lines:
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
                        prepared = self._ingestor.prepare(lines, source=label)
                        commits.submit(Queued(prepared, position, line_no + 1, offset, None))
                        offset += consumed
                        line_no += len(lines)
                    if len(commits) > _COMMITS_AHEAD or (commits and not lines):
                        read, result = self._committed(commits)
                        self._count(read, result)
                        sender = self._sender
                        # Flow control: while the sender delivers, read on only once it takes these.
                        fresh, size = result.fresh, result.fresh_bytes
                        while not self._stop.is_set() and sender.delivering() and not sender.takes(size):
                            sender.pump(0.05)
                        if not sender.offer(fresh, size=size):
                            sender.wake()  # read them from the spool
                        yield raw_offset(fh) if name != _STDIN else 0
                        if self._stop.is_set():
                            return
                    if not lines and not commits:
                        break
            finally:
                # Batches committed and not counted yet (stopped meanwhile) are counted; those
                # not started are not committed, and are read again next time.
                for read, result in commits.close():
                    self._count(read, result)
        finally:
            if name != _STDIN:
                fh.close()


class _Committer:
    """Commits the batches of one file in order, on a thread of its own, beside the sender.

    A failed commit stops the ones after it (they would move the position past its lines): they
    fail too, and the first failure is what :meth:`take` raises.
    """

    def __init__(self, ingestor: Ingestor) -> None:
        self._ingestor = ingestor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="jobcompd-commit")
        self._futures: collections.deque[tuple[int, Future[BatchResult]]] = collections.deque()
        self._failed: BaseException | None = None

    def __len__(self) -> int:
        return len(self._futures)

    def submit(self, queued: Queued) -> None:
        """Commit ``queued`` after the batches submitted before it."""
        self._futures.append((len(queued.prepared.lines), self._pool.submit(self._commit, queued)))

    def _commit(self, queued: Queued) -> BatchResult:
        if self._failed is not None:
            raise self._failed
        try:
            return self._ingestor.commit(
                queued.prepared,
                source=queued.prepared.source,
                first_line_no=queued.first_line_no,
                first_offset=queued.first_offset,
                position=queued.position,
            )
        except BaseException as exc:
            self._failed = exc
            raise

    def oldest(self) -> Future[BatchResult]:
        """The commit of the oldest batch not taken yet."""
        return self._futures[0][1]

    def take(self) -> tuple[int, BatchResult]:
        """The lines and the commit of the oldest batch (waiting for it); raises its error."""
        read, future = self._futures.popleft()
        return read, future.result()

    def close(self) -> list[tuple[int, BatchResult]]:
        """Stop: the commit under way ends, those not started are dropped. The lines and commits of
        the batches committed and not taken."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        done = [
            (read, future.result())
            for read, future in self._futures
            if not future.cancelled() and future.exception() is None
        ]
        self._futures.clear()
        return done


def _skip(fh: BinaryIO, count: int) -> None:
    while count > 0:
        chunk = fh.read(min(count, io.DEFAULT_BUFFER_SIZE * 16))
        if not chunk:
            return
        count -= len(chunk)
