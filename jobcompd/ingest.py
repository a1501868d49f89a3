"""Complete lines read from a log → records and quarantined lines, committed with the position.

Shared by ``jobcompd replay`` and the tailer: one call is one state transaction, so what was read
and where the reader stands can never disagree after a crash.
"""

from __future__ import annotations

import gzip
import sys
from collections.abc import Sequence
from typing import BinaryIO

from jobcompd.encode import Encoder
from jobcompd.record import DEFAULT_MAX_LINE_BYTES, ParseError, parse_line
from jobcompd.state import BatchResult, NewRecord, QuarantinedLine, ReadPosition, State

__all__ = ["Ingestor", "open_log"]


def open_log(name: str) -> BinaryIO:
    """A log file for reading bytes — gzip recognised by its magic bytes — or ``-`` for stdin."""
    if name == "-":
        return sys.stdin.buffer
    fh: BinaryIO = open(name, "rb")  # noqa: SIM115 - returned to the caller
    if fh.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[attr-defined]
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


class Ingestor:
    """Parses, encodes and commits batches of lines from one source."""

    def __init__(
        self, state: State, encoder: Encoder, *, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    ) -> None:
        self._state = state
        self._encoder = encoder
        self._max = max_line_bytes

    def commit(
        self,
        lines: Sequence[bytes],
        *,
        source: str,
        first_line_no: int,
        first_offset: int,
        position: ReadPosition | None,
        offsets: Sequence[int] | None = None,
    ) -> BatchResult:
        """Turn ``lines`` (each with its newline, if it had one) into one committed batch.

        ``source`` names the file for operators (``path``); line numbers and byte offsets of
        quarantined lines are counted from ``first_line_no`` and ``first_offset``, unless the
        reader gives each line's exact ``offsets`` (an over-long line is cut short when read).
        """
        encoder = self._encoder
        records: list[NewRecord] = []
        quarantined: list[QuarantinedLine] = []
        offset = first_offset
        for index, line in enumerate(lines):
            record = parse_line(line, max_bytes=self._max)
            if isinstance(record, ParseError):
                at = offsets[index] if offsets is not None else offset
                quarantined.append(
                    QuarantinedLine(source, first_line_no + index, at, bytes(line), record.reason)
                )
            else:
                records.append(
                    NewRecord(
                        encoder.record_id(line, record),
                        record.jobid,
                        encoder.encode(record),
                        source,
                    )
                )
            offset += len(line)
        return self._state.commit_batch(records, position=position, quarantined=quarantined)
