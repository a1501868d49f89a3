"""The parse worker's child process: batches of lines in, encoded records out.

Run as ``python -m jobcompd._parse_child PARENT_PID`` by :class:`jobcompd.ingest.ParseWorker`. It
imports only the parser and the encoder (no SQLite, Kafka or logging), so it stays small. Frames on
stdin and stdout are an 8-byte little-endian length, then a :mod:`marshal` body (parent and child
run the same interpreter):

* request: ``(zone key, fallback cluster, max line bytes, [line, ...])``
* answer: ``(True, (rids, jobids, payloads, at, bad, ambiguous))`` — ``at`` holds the index of
  each record's first line, ``bad`` ``(index, reason)`` of each line that is not a record,
  ``ambiguous`` the job ids of records read with a choice (see :mod:`jobcompd.record`) — or
  ``(False, error text)`` if the batch could not be parsed.

The child holds nothing durable: it exits at end of input, ignores the signals a service manager
sends to the whole group (its parent decides when it stops), and dies with its parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import marshal
import os
import signal
import struct
import sys
from collections.abc import Sequence
from typing import IO, Any

from jobcompd._memory import tune_memory
from jobcompd.encode import Encoder, resolve_zone
from jobcompd.record import ParseError, parse_records

__all__ = ["HEADER", "Columns", "parse_lines", "read_frame", "write_frame"]

HEADER = struct.Struct("<Q")
Columns = tuple[list[str], list[int], list[bytes], list[int], list[tuple[int, str]], list[int]]
_PR_SET_PDEATHSIG = 1


def parse_lines(encoder: Encoder, max_bytes: int, lines: Sequence[bytes]) -> Columns:
    """Record ids, job ids, JSON payloads and first line indexes of the records in ``lines``, the
    lines that are not records, and the job ids of records that had more than one reading.

    A record may span several lines (line breaks in its name); its id is that of all its bytes.
    Whatever goes wrong with one record — a bug included — costs that record alone: it is
    reported as a bad line with the error, and the rest of the batch goes on.
    """
    rids: list[str] = []
    jobids: list[int] = []
    payloads: list[bytes] = []
    at: list[int] = []
    bad: list[tuple[int, str]] = []
    ambiguous: list[int] = []
    encode = encoder.encode
    record_id = encoder.record_id
    for index, count, record in parse_records(lines, max_bytes=max_bytes):
        if record.__class__ is ParseError:
            bad.append((index, record.reason))  # type: ignore[union-attr]
            continue
        raw = lines[index] if count == 1 else b"".join(lines[index : index + count])
        try:
            payload = encode(record)  # type: ignore[arg-type]
            rid = record_id(raw, record)  # type: ignore[arg-type]
        except Exception as exc:  # a defect, never a reason to lose the batch
            bad.extend((i, f"cannot encode the record: {exc!r}") for i in range(index, index + count))
            continue
        rids.append(rid)
        jobids.append(record.jobid)  # type: ignore[union-attr]
        payloads.append(payload)
        at.append(index)
        if record.ambiguous:  # type: ignore[union-attr]
            ambiguous.append(record.jobid)  # type: ignore[union-attr]
    return rids, jobids, payloads, at, bad, ambiguous


def read_frame(stream: IO[bytes]) -> bytes:
    """The next frame's body, to :func:`marshal.loads`; EOFError at end of input or a cut-short frame."""
    header = stream.read(HEADER.size)
    if len(header) < HEADER.size:
        raise EOFError
    (size,) = HEADER.unpack(header)
    body = stream.read(size)
    if len(body) < size:
        raise EOFError
    return body


def write_frame(stream: IO[bytes], value: Any) -> None:
    """Write ``value`` as one frame and flush it."""
    body = marshal.dumps(value)
    stream.write(HEADER.pack(len(body)))
    stream.write(body)
    stream.flush()


def main() -> None:
    parent = int(sys.argv[1])
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return
    tune_memory()
    # The frames get stdin and stdout to themselves: anything printed goes to stderr.
    requests = os.fdopen(os.dup(0), "rb")
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    encoders: dict[tuple[str, str | None], Encoder] = {}
    while True:
        try:
            body = read_frame(requests)
        except EOFError:
            return
        try:
            zone, cluster, max_bytes, lines = marshal.loads(body)
            del body
            encoder = encoders.get((zone, cluster))
            if encoder is None:
                encoder = encoders[zone, cluster] = Encoder(resolve_zone(zone), cluster)
            answer: tuple[bool, object] = (True, parse_lines(encoder, max_bytes, lines))
        except Exception as exc:  # a bug, never bad input: the parent parses the batch itself
            answer = (False, repr(exc))
        lines = None  # the batch is not needed while the answer is written
        write_frame(answers, answer)
        del answer


if __name__ == "__main__":
    main()
