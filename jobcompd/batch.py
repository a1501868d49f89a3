"""Lines → a batch of encoded records: the one seam between reading and spooling.

:func:`parse_batch` is what the parse worker, in-process parsing, ``jobcompd parse`` and the
benchmark all run, and its :class:`RecordBatch` is what the state commits as it is. A faster
parser plugs in here. A :class:`ParseSpec` is plain values, so a child process given one parses
exactly as its parent does (the same zone, not one looked up again by name).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

from jobcompd.encode import Encoder
from jobcompd.fastpath import compiled_alone, compiled_encoder
from jobcompd.joining import parse_records_around, unfinished_tail
from jobcompd.record import ParseError
from jobcompd.zone import Zone, ZoneSpec

__all__ = ["ParseSpec", "RecordBatch", "encoder_for", "parse_batch", "unfinished_lines"]


class ParseSpec(NamedTuple):
    """How to parse: the log's zone, the fallback cluster for record ids, the longest record."""

    zone: ZoneSpec
    cluster: str | None
    max_line_bytes: int


class RecordBatch(NamedTuple):
    """The records of a batch of lines as columns: record ids, job ids, JSON payloads and the
    index of each record's first line; ``(index, reason)`` of each line that is not a record; the
    job ids of records read with a choice between readings (see :mod:`jobcompd.record`); the
    payloads as the spool stores them, when a parse thread made them
    (:class:`jobcompd.ingest.ParseThread`); whether the compiled reader made every record in this
    process, so that each id is a ``str`` of 32 hex digits, each job id an ``int`` of 32 bits and
    each payload ``bytes`` (the state checks the types of any other batch before it stores it)."""

    rids: list[str]
    jobids: list[int]
    payloads: list[bytes]
    at: list[int]
    bad: list[tuple[int, str]]
    ambiguous: list[int]
    packed: bytes | None = None
    typed: bool = False
    sent: int = 0  # the number of the batch produced before its commit (Sender.send_batch_early)

    def then(self, later: RecordBatch, lines: int) -> RecordBatch:
        """These records, then those of ``later``, the batch of the lines read right after these
        ``lines``: one batch of all the lines (indexes of ``later``'s lines shifted by ``lines``)."""
        return RecordBatch(
            self.rids + later.rids,
            self.jobids + later.jobids,
            self.payloads + later.payloads,
            self.at + [index + lines for index in later.at],
            self.bad + [(index + lines, reason) for index, reason in later.bad],
            self.ambiguous + later.ambiguous,
            typed=self.typed and later.typed,
        )


@functools.lru_cache(maxsize=8)
def encoder_for(zone: ZoneSpec, cluster: str | None) -> Encoder:
    """The encoder for a zone and fallback cluster (built once)."""
    return Encoder(Zone.from_spec(zone).tz, cluster)


def parse_batch(lines: Sequence[bytes], spec: ParseSpec) -> RecordBatch:
    """Parse and encode ``lines``.

    The compiled reader (:mod:`jobcompd.fastpath`), when built, reads the usual records; the
    Python reader reads every other line, and the records split across lines. A record may span
    several lines (line breaks in its name); its id is that of all its bytes. Whatever goes wrong
    with one record — a bug included — costs that record alone: it is reported as a bad line with
    the error, and the rest of the batch goes on.
    """
    compiled = compiled_encoder(spec.zone, spec.cluster, spec.max_line_bytes)
    if compiled is None:
        return _parse_batch(lines, spec, None)
    answered = compiled.encode_lines(lines)
    if len(answered[3]) == len(lines):
        rids, jobids, payloads, at = answered
        return RecordBatch(rids, jobids, payloads, at, [], [], typed=True)
    return _parse_batch(lines, spec, answered)


def unfinished_lines(lines: Sequence[bytes], spec: ParseSpec) -> int:
    """How many of the last ``lines`` start a record that lines not read yet may still complete
    (:func:`jobcompd.joining.unfinished_tail`): the compiled reader, when built, says which lines
    are a record alone, so the usual batch is not parsed twice, nor a 17.02 line in Python."""
    alone = compiled_alone(spec.zone, spec.max_line_bytes)
    return unfinished_tail(lines, max_bytes=spec.max_line_bytes, alone=alone)


def _parse_batch(
    lines: Sequence[bytes],
    spec: ParseSpec,
    compiled: tuple[list[str], list[int], list[bytes], list[int]] | None,
) -> RecordBatch:
    """The Python reader's loop, taking the compiled reader's records (if any) in their turn."""
    encoder = encoder_for(spec.zone, spec.cluster)
    out = RecordBatch([], [], [], [], [], [])
    rids, jobids, payloads, at, bad, ambiguous, *_ = out
    encode = encoder.encode
    record_id = encoder.record_id
    c_rids, c_jobids, c_payloads, c_at = compiled if compiled is not None else ([], [], [], [])
    answered = {index: k for k, index in enumerate(c_at)}
    for index, count, record in parse_records_around(lines, answered, max_bytes=spec.max_line_bytes):
        if record is None:  # the compiled reader's
            k = answered[index]
            rids.append(c_rids[k])
            jobids.append(c_jobids[k])
            payloads.append(c_payloads[k])
            at.append(index)
            continue
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
    return out
