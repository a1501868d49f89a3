"""Complete lines read from a log → records and quarantined lines, committed with the position.

Shared by ``jobcompd replay`` and the tailer: one call is one state transaction, so what was read
and where the reader stands can never disagree after a crash.

Parsing and encoding are CPU work. The compiled reader does it without holding the interpreter,
so a :class:`ParseThread` parses big batches beside the caller, who commits and sends the batch
before. The Python reader holds the interpreter throughout: with a :class:`ParseWorker`, big
batches are parsed in a child process (:mod:`jobcompd._parse_child`), so that work runs on a second
core beside the sender and SQLite; the child holds nothing durable, and if it dies the batch is
parsed in-process instead.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import functools
import itertools
import marshal
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple, Protocol

import structlog

import jobcompd
from jobcompd._parse_child import read_frame, write_frame
from jobcompd.batch import ParseSpec, RecordBatch, parse_batch, unfinished_lines
from jobcompd.config import SourceSettings
from jobcompd.fastpath import PARSER
from jobcompd.identity import Position
from jobcompd.joining import unfinished_tail
from jobcompd.logfile import BATCH_LINES
from jobcompd.record import DEFAULT_MAX_LINE_BYTES
from jobcompd.state import (
    BATCH_RECORDS,
    BatchResult,
    NewRecord,
    QuarantinedLine,
    State,
    StateError,
    pack_payloads,
)
from jobcompd.threads import NamedThread, name_this_thread

if TYPE_CHECKING:
    from jobcompd.producer import Sender

__all__ = [
    "WORKER_MIN_LINES",
    "Ingestor",
    "ParseThread",
    "ParseWorker",
    "ParseWorkerError",
    "Prepared",
    "Queued",
    "ReadAhead",
    "read_batches",
]

WORKER_MIN_LINES = 200
"""Smaller batches are parsed by the caller: the hand-over would cost more than it saves."""
# A big batch's records are sent as soon as it is parsed, and it is committed once Kafka
# acknowledged them (they are not spooled then): it waits this long at most for their reports,
# while up to _SENT_AHEAD batches are read, parsed and sent (within the sender's early window).
_ACK_WAIT_S = 0.05
_SENT_AHEAD = 6


def read_batches(
    fh: BinaryIO,
    size: int,
    *,
    max_bytes: int = DEFAULT_MAX_LINE_BYTES,
    unfinished: Callable[[Sequence[bytes]], int] | None = None,
) -> Iterator[list[bytes]]:
    """Batches of up to ``size`` lines of ``fh`` (more when a record continues past the end).

    A batch never ends inside a record whose name holds line breaks: the lines that may be the
    start of such a record are carried over to the next batch (``unfinished``, by default
    :func:`unfinished_tail` within ``max_bytes``; :meth:`Ingestor.unfinished` asks the compiled
    reader first).
    """
    if unfinished is None:
        unfinished = functools.partial(unfinished_tail, max_bytes=max_bytes)
    carry: list[bytes] = []
    while True:
        more = list(itertools.islice(fh, size))
        if not more:  # end of input: what is carried is all there is
            if carry:
                yield carry
            return
        lines = carry + more
        keep = unfinished(lines)
        lines, carry = lines[: len(lines) - keep], lines[len(lines) - keep :]
        if lines:
            yield lines


class ParseWorkerError(Exception):
    """The child could not parse a batch (it died, or failed): parse it in-process instead."""

    def __init__(self, message: str, *, exited: bool = False) -> None:
        super().__init__(message)
        self.exited = exited


SendParsed = Callable[[RecordBatch], int]
"""What sends a batch's records before their commit (:attr:`Ingestor.send`)."""


class Parser(Protocol):
    """Where big batches are parsed beside the caller: :class:`ParseThread` or :class:`ParseWorker`."""

    def submit(
        self, spec: ParseSpec, lines: Sequence[bytes], send: SendParsed | None = None
    ) -> Future[RecordBatch] | None: ...

    def failed(self, exc: BaseException) -> None: ...

    def close(self, *, wait: bool = True) -> None: ...


_PARSE_THREAD = "jobcompd-parse"  # its name, in Python and (without the prefix) in the OS


class ParseThread:
    """A thread that parses and encodes big batches with the compiled reader, which reads a batch
    without holding the interpreter, and packs their payloads as the spool stores them (also
    without it): the caller commits and sends one batch while the next is read.

    Nothing is copied between processes and no memory is added but the thread's; a batch that
    fails here is parsed again by the caller (:meth:`Ingestor._parsed`).
    """

    def __init__(self, *, logger: Any = None) -> None:
        self._log = logger or structlog.get_logger("jobcompd.ingest")
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=_PARSE_THREAD,
            initializer=name_this_thread, initargs=(_PARSE_THREAD,),
        )

    def submit(
        self, spec: ParseSpec, lines: Sequence[bytes], send: SendParsed | None = None
    ) -> Future[RecordBatch] | None:
        """Start parsing ``lines`` on the thread (and sending their records with ``send``, if
        given: :attr:`Ingestor.send`); ``None`` once closed."""
        try:
            return self._pool.submit(_parse_packed, lines, spec, send)
        except RuntimeError:  # shut down
            return None

    def failed(self, exc: BaseException) -> None:
        """A batch handed to :meth:`submit` failed with ``exc`` (the caller parses it again)."""
        self._log.warning("parse thread could not parse a batch; parsed again", error=repr(exc))

    def close(self, *, wait: bool = True) -> None:
        """Stop the thread (idempotent); batches not started are not parsed there."""
        self._pool.shutdown(wait=wait, cancel_futures=True)


def _parse_packed(lines: Sequence[bytes], spec: ParseSpec, send: SendParsed | None = None) -> RecordBatch:
    """:func:`parse_batch`, then the records sent with ``send`` if given (:attr:`Ingestor.send`),
    else their payloads packed as the spool stores them: on the parse thread, so that the commit
    has less to do (packing runs without the interpreter lock)."""
    batch = parse_batch(lines, spec)
    if send is not None and batch.rids and (sent := send(batch)):
        return batch._replace(sent=sent)
    if not batch.payloads or len(batch.payloads) > BATCH_RECORDS:
        return batch
    return batch._replace(packed=pack_payloads(batch.payloads))


class ParseWorker:
    """A child process that parses and encodes big batches (started at the first one).

    A writer thread feeds it batches and a reader thread takes its answers, so neither side can
    block the other on a full pipe, and the caller can go on while the child parses. A child that
    dies or cannot be started is reported and replaced; meanwhile batches are parsed in-process,
    so a failure here costs speed, never lines.
    """

    def __init__(self, *, logger: Any = None) -> None:
        self._log = logger or structlog.get_logger("jobcompd.ingest")
        self._lock = threading.Lock()
        self._child: _Child | None = None

    @property
    def pid(self) -> int | None:
        """The running child's process id, if one runs."""
        child = self._child
        return None if child is None else child.proc.pid

    def submit(
        self, spec: ParseSpec, lines: Sequence[bytes], send: SendParsed | None = None
    ) -> Future[RecordBatch] | None:
        """Start parsing ``lines`` in the child; ``None`` if the child cannot take them. (``send``
        is not used: records parsed in another process are not sent before their commit.)"""
        with self._lock:
            child = self._child
            if child is not None and child.gone is not None:
                self._failed(child.gone)
                child = None
            if child is None:
                try:
                    child = self._child = _Child()
                except OSError as exc:  # no processes or memory left
                    self._failed(exc)
                    return None
            return child.submit(spec, lines)

    def failed(self, exc: BaseException) -> None:
        """A batch handed to :meth:`submit` failed with ``exc``: report it; a dead child is replaced.

        Batches still queued for a child that died all fail; it is reported (and replaced) once.
        """
        with self._lock:
            child = self._child
            if child is not None and child.gone is not None:
                self._failed(child.gone)
            elif not (isinstance(exc, ParseWorkerError) and exc.exited):
                self._log.warning("parse worker could not parse a batch; parsed in-process", error=str(exc))

    def _failed(self, exc: BaseException) -> None:
        self._log.warning("parse worker failed; parsing in-process until it is restarted", error=str(exc))
        child, self._child = self._child, None
        if child is not None:
            child.close(wait=False)

    def close(self, *, wait: bool = True) -> None:
        """Stop the child (idempotent); batches still being parsed fail with ParseWorkerError."""
        with self._lock:
            child, self._child = self._child, None
        if child is not None:
            child.close(wait=wait)


class _Child:
    """One child process and the two threads that talk to it."""

    def __init__(self) -> None:
        root = str(Path(jobcompd.__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobcompd._parse_child", str(os.getpid())],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self.gone: ParseWorkerError | None = None
        self._lock = threading.Lock()
        self._waiting: collections.deque[Future[RecordBatch]] = collections.deque()
        self._requests: queue.SimpleQueue[tuple[object, ...] | None] = queue.SimpleQueue()
        self._threads = [
            NamedThread(target=self._write, name="jobcompd-worker-in", daemon=True),
            NamedThread(target=self._read, name="jobcompd-worker-out", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, spec: ParseSpec, lines: Sequence[bytes]) -> Future[RecordBatch]:
        future: Future[RecordBatch] = Future()
        with self._lock:
            if self.gone is not None:
                future.set_exception(self.gone)
                return future
            self._waiting.append(future)
        self._requests.put((tuple(spec), lines))
        return future

    def _write(self) -> None:
        stream = self.proc.stdin
        assert stream is not None
        try:
            while (request := self._requests.get()) is not None:
                write_frame(stream, request)
        except (OSError, ValueError):  # the child is gone: the reader reports it
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _read(self) -> None:
        stream = self.proc.stdout
        assert stream is not None
        while True:
            try:
                ok, value = marshal.loads(read_frame(stream))
                with self._lock:
                    future = self._waiting.popleft()
            except Exception:  # end of input, a broken pipe, a garbled frame: this child is done
                break
            try:
                if not ok:
                    raise ParseWorkerError(f"the parse worker failed: {value}")
                # Made in another process: the state checks its types.
                future.set_result(RecordBatch(*value)._replace(typed=False))
            except Exception as exc:
                future.set_exception(exc)
        code = self.proc.poll()
        self._end(f"the parse worker exited{'' if code is None else f' (status {code})'}")

    def _end(self, why: str) -> None:
        with self._lock:
            if self.gone is None:
                self.gone = ParseWorkerError(why, exited=True)
            gone = self.gone
            waiting, self._waiting = self._waiting, collections.deque()
        for future in waiting:
            future.set_exception(gone)

    def close(self, *, wait: bool) -> None:
        self._requests.put(None)  # end of input: the child exits when it has answered
        if wait:
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        else:
            self.proc.kill()
        self.proc.wait()
        for thread in self._threads:
            thread.join(timeout=10)
        self._end("the parse worker was stopped")


class Prepared:
    """A batch being parsed (in the child or already done), to be committed with :meth:`Ingestor.commit`."""

    __slots__ = ("_future", "_parsed", "delivered", "handed", "lines", "source")

    def __init__(self, lines: Sequence[bytes], source: str, parsed: RecordBatch | None = None) -> None:
        self.lines = lines
        self.source = source
        self._future: Future[RecordBatch] | None = None
        self._parsed = parsed
        # Handed to the parse thread or worker, to be parsed beside the caller (so that reading the
        # next batch meanwhile pays); a small batch is parsed by the caller.
        self.handed = False
        # The indexes of its records Kafka acknowledged before its commit, once they are known.
        self.delivered: Sequence[int] | None = None

    @property
    def ready(self) -> bool:
        """Whether the batch is parsed (its records taken without a wait)."""
        return self._parsed is not None or (self._future is not None and self._future.done())


class Ingestor:
    """Parses, encodes and commits batches of lines from one source."""

    def __init__(
        self,
        state: State,
        spec: ParseSpec,
        *,
        worker: Parser | None = None,
        logger: Any = None,
    ) -> None:
        self._state = state
        self._spec = spec
        self._worker = worker
        self._log = logger or structlog.get_logger("jobcompd.ingest")
        self.last_quarantined: list[QuarantinedLine] = []
        """The lines the last :meth:`commit` quarantined (for the caller's log)."""
        self.send: SendParsed | None = None
        """Given, the parse thread hands each big batch it parsed to it: it sends the batch's
        records before their commit and returns the number of the batch sent
        (:meth:`jobcompd.producer.Sender.send_batch_early`), or 0; the batch's ``sent``."""

    @classmethod
    def configured(
        cls, state: State, source: SourceSettings, cluster: str | None, *, logger: Any = None
    ) -> Ingestor:
        """The ingestor of ``jobcompd run`` and ``replay``: the log's zone, its line limit and the
        parse worker as ``[source]`` says; :meth:`close` it when done.

        ``parse_worker = "auto"``: a parse thread on the compiled reader (it reads without holding
        the interpreter), a worker process on the Python reader (which holds it throughout).
        """
        spec = ParseSpec(source.zone.spec, cluster, source.max_line_bytes)
        worker: Parser | None = None
        if source.parse_worker is True:
            worker = ParseWorker(logger=logger)
        elif source.parse_worker == "auto":
            worker = ParseThread(logger=logger) if PARSER == "compiled" else ParseWorker(logger=logger)
        return cls(state, spec, worker=worker, logger=logger)

    @property
    def parsing(self) -> str:
        """Where big batches are parsed: ``thread``, ``worker process`` or ``in place``."""
        if isinstance(self._worker, ParseThread):
            return "thread"
        return "in place" if self._worker is None else "worker process"

    def unfinished(self, lines: Sequence[bytes]) -> int:
        """How many of the last ``lines`` to hold back: the start of a record that lines not read
        yet may complete (:func:`jobcompd.batch.unfinished_lines`)."""
        return unfinished_lines(lines, self._spec)

    @property
    def max_line_bytes(self) -> int:
        """The longest record accepted (line ending excluded)."""
        return self._spec.max_line_bytes

    def close(self) -> None:
        """Stop the parse worker, if there is one (idempotent)."""
        if self._worker is not None:
            self._worker.close()

    def prepare(self, lines: Sequence[bytes], *, source: str) -> Prepared:
        """Start parsing ``lines``: beside the caller for a big batch, so it can do other work."""
        prepared = Prepared(lines, source)
        if self._worker is not None and len(lines) >= WORKER_MIN_LINES:
            prepared._future = self._worker.submit(self._spec, list(lines), self.send)
            prepared.handed = True
        return prepared

    def parse(self, lines: Sequence[bytes]) -> RecordBatch:
        """Parse ``lines`` (a few: by the caller) as :meth:`commit` would."""
        return parse_batch(lines, self._spec)

    def _parsed(self, prepared: Prepared) -> RecordBatch:
        if prepared._parsed is None:
            future, prepared._future = prepared._future, None
            if future is not None:
                try:
                    prepared._parsed = future.result()
                except Exception as exc:  # the child died, or the batch failed: parse here instead
                    assert self._worker is not None
                    self._worker.failed(exc)
            if prepared._parsed is None:
                prepared._parsed = parse_batch(prepared.lines, self._spec)
        return prepared._parsed

    def retry_quarantined(self, lines: Sequence[QuarantinedLine]) -> tuple[BatchResult, int]:
        """Parse quarantined ``lines`` again with this parser; those that are records now leave the
        quarantine, spooled unless their record is already known. Returns the commit's result and
        how many lines left the quarantine.

        Lines that were neighbours in their file are parsed together, so a record split by line
        breaks whose lines were all quarantined (by an older parser) is joined again.
        """
        runs: list[list[QuarantinedLine]] = []
        for q in sorted(lines, key=lambda q: (q.source, q.line_no)):
            run = runs[-1] if runs else None
            if run and run[-1].source == q.source and run[-1].line_no + 1 == q.line_no:
                run.append(q)
            else:
                runs.append([q])
        records: list[NewRecord] = []
        released: list[int] = []
        ambiguous = 0
        for run in runs:
            parsed = parse_batch([q.raw for q in run], self._spec)
            bad = {index for index, _ in parsed.bad}
            records += map(NewRecord, parsed.rids, parsed.jobids, parsed.payloads, repeat(run[0].source))
            released += [q.id for index, q in enumerate(run) if index not in bad and q.id is not None]
            ambiguous += len(parsed.ambiguous)
        result = self._state.commit_batch(records, released=released, ambiguous=ambiguous)
        return result, len(released)

    def commit(
        self,
        lines: Sequence[bytes] | Prepared,
        *,
        source: str,
        first_line_no: int,
        first_offset: int,
        position: Position | None,
        offsets: Sequence[int] | None = None,
        delivered: Sequence[int] | None = None,
    ) -> BatchResult:
        """Turn ``lines`` (each with its newline, if it had one) into one committed batch.

        ``lines`` may be a batch already handed to :meth:`prepare`. ``source`` names the file for
        operators (``path``); line numbers and byte offsets of quarantined lines are counted from
        ``first_line_no`` and ``first_offset``, unless the reader gives each line's exact
        ``offsets`` (an over-long line is cut short when read).
        """
        prepared = lines if isinstance(lines, Prepared) else self.prepare(lines, source=source)
        parsed = self._parsed(prepared)
        raw = prepared.lines
        starts = offsets

        def quarantine(index: int, reason: str) -> QuarantinedLine:
            nonlocal starts
            if starts is None:  # each line's offset, counted once for the quarantined ones
                starts = list(itertools.accumulate(map(len, raw[:-1]), initial=first_offset))
            return QuarantinedLine(source, first_line_no + index, starts[index], bytes(raw[index]), reason)

        quarantined = [quarantine(i, reason) for i, reason in parsed.bad]
        self.last_quarantined = quarantined
        for jobid in parsed.ambiguous:
            self._log.warning(
                "job record read with a choice between readings: fake fields in a name, a "
                "working directory or an account (see docs/reading.md, 'Ambiguous records')",
                jobid=jobid,
                path=source,
            )
        try:
            return self._state.commit_batch(
                parsed,
                source=source,
                position=position,
                quarantined=quarantined,
                ambiguous=len(parsed.ambiguous),
                delivered=delivered,
            )
        except StateError as exc:
            if not exc.rejected:
                raise
        # A record the state refuses costs that record alone: the others are spooled one by one
        # (a crash meanwhile re-reads them, and their ids are known), the refused ones quarantined
        # with the reason, and the position moves with the last transaction.
        self._log.error("the state refused a record of a batch; storing them one by one", path=source)
        spooled = known = 0
        records = map(NewRecord, parsed.rids, parsed.jobids, parsed.payloads, repeat(source))
        acked = set(delivered or ())
        for k, (record, index) in enumerate(zip(records, parsed.at, strict=True)):
            try:
                one = self._state.commit_batch([record], delivered=[0] if k in acked else None)
                spooled += one.spooled
                known += one.already_known
            except StateError as exc:
                if not exc.rejected:
                    raise
                quarantined.append(quarantine(index, f"the state refused the record: {exc.reason}"))
        quarantined.sort(key=lambda q: q.line_no)
        result = self._state.commit_batch(
            [], position=position, quarantined=quarantined, ambiguous=len(parsed.ambiguous)
        )
        return BatchResult(spooled, known, result.quarantined)


class Queued(NamedTuple):
    """A batch read and handed to the parser, with what its commit needs."""

    prepared: Prepared
    position: Position | None
    first_line_no: int
    first_offset: int
    offsets: Sequence[int] | None


class ReadAhead:
    """Batches read and not yet committed, oldest first (``run``'s and ``replay``'s).

    The next batch is read (and handed to the parse thread) while the one before it is parsed and
    committed; a big batch whose records the parse thread sent (:attr:`Ingestor.send`) waits for
    Kafka's reports before its commit, the next ones read meanwhile (:meth:`await_reports`). It
    owns the answer to "where does this file stand": the end of the newest batch held for it, else
    the committed position.
    """

    def __init__(self, ingestor: Ingestor, state: State) -> None:
        self._ingestor = ingestor
        self._state = state
        self._queue: collections.deque[Queued] = collections.deque()

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def ingestor(self) -> Ingestor:
        """What parses and commits the batches (its ``last_quarantined``: the last commit's)."""
        return self._ingestor

    def add(
        self,
        lines: Sequence[bytes],
        *,
        source: str,
        position: Position | None,
        first_line_no: int,
        first_offset: int,
        offsets: Sequence[int] | None = None,
    ) -> None:
        """Queue a batch read from ``source`` (starting to parse it), ``position`` its end."""
        prepared = self._ingestor.prepare(lines, source=source)
        self._queue.append(Queued(prepared, position, first_line_no, first_offset, offsets))

    def joins(self, position: Position, first_offset: int, count: int) -> bool:
        """Whether ``count`` lines, read from ``first_offset`` up to ``position``, can :meth:`join`
        the newest batch held: they come right after it in the same file (under the same path), it
        is parsed by the caller, and the two make a small batch still."""
        if not self._queue:
            return False
        newest = self._queue[-1]
        held = newest.position
        return (
            held is not None
            and not newest.prepared.handed
            and (held.key, held.path, held.offset) == (position.key, position.path, first_offset)
            and len(newest.prepared.lines) + count < WORKER_MIN_LINES
        )

    def join(
        self, lines: Sequence[bytes], parsed: RecordBatch, *, position: Position, offsets: Sequence[int]
    ) -> None:
        """Make ``lines`` (their records ``parsed``, ``offsets`` where each starts) part of the
        newest batch held, which they follow (:meth:`joins`): one commit holds both, and ``position``
        is where it leaves the file."""
        newest = self._queue[-1]
        assert newest.position is not None and self.joins(position, offsets[0], len(lines))
        before = newest.prepared
        records = self._ingestor._parsed(before).then(parsed, len(before.lines))
        self._queue[-1] = newest._replace(
            prepared=Prepared([*before.lines, *lines], before.source, records),
            position=position,
            offsets=None if newest.offsets is None else [*newest.offsets, *offsets],
        )

    @property
    def head(self) -> Queued:
        """The oldest batch, the next to commit."""
        return self._queue[0]

    def head_records(self) -> RecordBatch:
        """The records of the oldest batch (parsed now if they are not yet)."""
        return self._ingestor._parsed(self._queue[0].prepared)

    def __getitem__(self, index: int) -> Queued:
        return self._queue[index]

    def await_reports(
        self, sender: Sender, read_more: Callable[[], bool], halted: Callable[[], bool]
    ) -> None:
        """The oldest batch, parsed beside: if its records were sent as it was parsed
        (:meth:`Sender.send_parsed`), wait up to ``_ACK_WAIT_S`` from then for Kafka to acknowledge
        them — reading (``read_more``: whether it added a batch), parsing and sending the batches
        after it meanwhile — and set those it acknowledged to be committed as delivered
        (``prepared.delivered``: kept if the commit fails and is tried again). ``halted``: stop
        waiting (a stop, a state error)."""
        prepared = self.head.prepared
        parsed = self.head_records()
        if prepared.delivered is not None or not parsed.sent:
            return
        number = parsed.sent
        deadline = sender.sent_at(number) + _ACK_WAIT_S
        while not sender.reported(number) and not halted():
            now = time.monotonic()
            if now >= deadline:
                break
            # Read what comes next, to be parsed and sent, while Kafka acknowledges records as
            # they go and there is room to send it (brokers down, batches are not read ahead:
            # they would only wait in memory).
            while len(self) < _SENT_AHEAD and sender.acknowledging() and sender.early_room(
                BATCH_LINES * (1 + sum(not queued.prepared.ready for queued in self._queue))
            ):
                if not read_more():
                    break
            sender.wait_reported(number, min(deadline - now, 0.005))
        prepared.delivered = sender.delivered_of(number, parsed.rids)

    def commit(self) -> BatchResult:
        """Commit the oldest batch with its position (its records that Kafka acknowledged already,
        ``prepared.delivered``, as delivered); on StateError it stays, to be tried again."""
        head = self._queue[0]
        result = self._ingestor.commit(
            head.prepared,
            source=head.prepared.source,
            first_line_no=head.first_line_no,
            first_offset=head.first_offset,
            position=head.position,
            offsets=head.offsets,
            delivered=head.prepared.delivered,
        )
        self._queue.popleft()
        return result

    def clear(self) -> None:
        """Forget the batches held (they are read again from the committed positions)."""
        self._queue.clear()

    def position(self, key: str) -> Position | None:
        """Where the file stored under ``key`` stands: the end of the newest batch held for it,
        else its committed position."""
        for queued in reversed(self._queue):
            if queued.position is not None and queued.position.key == key:
                return dataclasses.replace(queued.position, updated_at=time.time())
        return self._state.position(key)
