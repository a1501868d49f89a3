"""Complete lines read from a log → records and quarantined lines, committed with the position.

Shared by ``jobcompd replay`` and the tailer: one call is one state transaction, so what was read
and where the reader stands can never disagree after a crash.

Parsing and encoding are pure CPU work under the GIL. With a :class:`ParseWorker`, big batches are
parsed in a child process, so that work runs on a second core beside the sender and SQLite; the
child holds nothing durable, and if it dies the batch is parsed in-process instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import gzip
import multiprocessing
import signal
import sys
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, BinaryIO

import structlog

from jobcompd.encode import Encoder, resolve_zone
from jobcompd.record import DEFAULT_MAX_LINE_BYTES, ParseError, parse_line
from jobcompd.state import BatchResult, NewRecord, QuarantinedLine, ReadPosition, State

__all__ = ["WORKER_MIN_LINES", "Ingestor", "ParseWorker", "Parsed", "Pending", "open_log", "parse_batch"]

WORKER_MIN_LINES = 200
"""Smaller batches are parsed in-process: the round trip to the child would cost more than it saves."""

_PR_SET_PDEATHSIG = 1

# (zone key, fallback cluster, max line bytes): everything a child needs to parse like the parent.
_Spec = tuple[str, str | None, int]
Parsed = tuple[list[NewRecord], list[tuple[int, str]]]
"""Records of a batch, and ``(index in the batch, reason)`` of each line that is not one."""


def open_log(name: str) -> BinaryIO:
    """A log file for reading bytes — gzip recognised by its magic bytes — or ``-`` for stdin."""
    if name == "-":
        return sys.stdin.buffer
    fh: BinaryIO = open(name, "rb")  # noqa: SIM115 - returned to the caller
    if fh.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[attr-defined]
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def parse_batch(encoder: Encoder, max_bytes: int, lines: Sequence[bytes], source: str) -> Parsed:
    """Parse and encode ``lines``; the same result in-process or in the child."""
    records: list[NewRecord] = []
    bad: list[tuple[int, str]] = []
    encode = encoder.encode
    record_id = encoder.record_id
    for index, line in enumerate(lines):
        record = parse_line(line, max_bytes=max_bytes)
        if record.__class__ is ParseError:
            bad.append((index, record.reason))  # type: ignore[union-attr]
        else:
            records.append(NewRecord(record_id(line, record), record.jobid, encode(record), source))  # type: ignore[arg-type,union-attr]
    return records, bad


# -- the child process ---------------------------------------------------------------------------

_encoders: dict[_Spec, Encoder] = {}


def _child_init() -> None:
    # Signals are the parent's business: it shuts the child down, and the child must outlive a
    # SIGTERM sent to the whole service (systemd's default KillMode) until the parent is done.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    # Die with the parent, even on kill -9: a parser with no one to answer is useless.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _parse_in_child(spec: _Spec, lines: list[bytes], source: str) -> Parsed:
    encoder = _encoders.get(spec)
    if encoder is None:
        zone, cluster, _ = spec
        encoder = _encoders[spec] = Encoder(resolve_zone(zone), cluster)
    return parse_batch(encoder, spec[2], lines, source)


class ParseWorker:
    """A child process that parses and encodes big batches (started at the first one).

    A child that dies or cannot be started is reported and replaced; meanwhile batches are parsed
    in-process, so a failure here costs speed, never lines.
    """

    def __init__(self, *, logger: Any = None) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._log = logger or structlog.get_logger("jobcompd.ingest")

    def submit(self, spec: _Spec, lines: list[bytes], source: str) -> Future[Parsed] | None:
        """Start parsing ``lines`` in the child; ``None`` if the child cannot take them."""
        try:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    1, mp_context=multiprocessing.get_context("spawn"), initializer=_child_init
                )
            return self._pool.submit(_parse_in_child, spec, lines, source)
        except Exception as exc:  # BrokenProcessPool, or no processes/memory left
            self.failed(exc)
            return None

    def failed(self, exc: BaseException) -> None:
        """The child failed: report it and start a new one with the next batch."""
        self._log.warning("parse worker failed; parsing in-process until it is restarted", error=repr(exc))
        self.close(wait=False)

    def close(self, *, wait: bool = True) -> None:
        """Stop the child (idempotent)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)


class Pending:
    """A batch being parsed (in the child or already done), to be committed with :meth:`Ingestor.commit`."""

    __slots__ = ("_future", "_parsed", "lines", "source")

    def __init__(self, lines: Sequence[bytes], source: str) -> None:
        self.lines = lines
        self.source = source
        self._future: Future[Parsed] | None = None
        self._parsed: Parsed | None = None


class Ingestor:
    """Parses, encodes and commits batches of lines from one source."""

    def __init__(
        self,
        state: State,
        encoder: Encoder,
        *,
        max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
        worker: ParseWorker | None = None,
    ) -> None:
        self._state = state
        self._encoder = encoder
        self._max = max_line_bytes
        self._worker = worker
        key = getattr(encoder.zone, "key", None)
        self._spec: _Spec | None = None if key is None else (key, encoder.cluster, max_line_bytes)

    def prepare(self, lines: Sequence[bytes], *, source: str) -> Pending:
        """Start parsing ``lines``: in the child for a big batch, so the caller can do other work."""
        pending = Pending(lines, source)
        if self._worker is not None and self._spec is not None and len(lines) >= WORKER_MIN_LINES:
            pending._future = self._worker.submit(self._spec, list(lines), source)
        return pending

    def _parsed(self, pending: Pending) -> Parsed:
        if pending._parsed is None:
            future, pending._future = pending._future, None
            if future is not None:
                try:
                    pending._parsed = future.result()
                except Exception as exc:  # the child died or failed: parse here instead
                    assert self._worker is not None
                    self._worker.failed(exc)
            if pending._parsed is None:
                pending._parsed = parse_batch(self._encoder, self._max, pending.lines, pending.source)
        return pending._parsed

    def commit(
        self,
        lines: Sequence[bytes] | Pending,
        *,
        source: str,
        first_line_no: int,
        first_offset: int,
        position: ReadPosition | None,
        offsets: Sequence[int] | None = None,
    ) -> BatchResult:
        """Turn ``lines`` (each with its newline, if it had one) into one committed batch.

        ``lines`` may be a batch already handed to :meth:`prepare`. ``source`` names the file for
        operators (``path``); line numbers and byte offsets of quarantined lines are counted from
        ``first_line_no`` and ``first_offset``, unless the reader gives each line's exact
        ``offsets`` (an over-long line is cut short when read).
        """
        pending = lines if isinstance(lines, Pending) else self.prepare(lines, source=source)
        records, bad = self._parsed(pending)
        quarantined: list[QuarantinedLine] = []
        if bad:
            raw = pending.lines
            starts = offsets
            if starts is None:
                starts = [first_offset]
                for line in raw[:-1]:
                    starts.append(starts[-1] + len(line))
            quarantined = [
                QuarantinedLine(source, first_line_no + i, starts[i], bytes(raw[i]), reason)
                for i, reason in bad
            ]
        return self._state.commit_batch(records, position=position, quarantined=quarantined)
