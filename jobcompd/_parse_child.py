"""The parse worker's child process: batches of lines in, encoded records out.

Run as ``python -m jobcompd._parse_child PARENT_PID`` by :class:`jobcompd.ingest.ParseWorker`. It
imports only the parser and the encoder (no SQLite, Kafka or logging), so it stays small. Frames on
stdin and stdout are an 8-byte little-endian length, then a :mod:`marshal` body (parent and child
run the same interpreter):

* request: ``(ParseSpec, [line, ...])`` (see :mod:`jobcompd.batch`)
* answer: ``(True, RecordBatch)`` as a tuple, or ``(False, error text)`` if the batch could not
  be parsed.

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
from typing import IO, Any

from jobcompd._memory import tune_memory
from jobcompd.batch import ParseSpec, parse_batch

__all__ = ["HEADER", "read_frame", "write_frame"]

HEADER = struct.Struct("<Q")
_PR_SET_PDEATHSIG = 1


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
    while True:
        try:
            body = read_frame(requests)
        except EOFError:
            return
        try:
            spec, lines = marshal.loads(body)
            del body
            answer: tuple[bool, object] = (True, tuple(parse_batch(lines, ParseSpec(*spec))))
        except Exception as exc:  # a bug, never bad input: the parent parses the batch itself
            answer = (False, repr(exc))
        lines = None  # the batch is not needed while the answer is written
        write_frame(answers, answer)
        del answer


if __name__ == "__main__":
    main()
