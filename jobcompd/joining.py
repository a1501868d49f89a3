"""Records split by line breaks: joining their lines, and holding back one not finished yet.

slurmctld writes a record in one ``write()``, line breaks of a job name (or working directory)
included, so one record can span several physical lines. These functions find them among the
lines read, using :func:`jobcompd.record.parse_line` on the candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Sequence

from jobcompd.record import DEFAULT_MAX_LINE_BYTES, JobRecord, ParseError, is_record_start, parse_line

__all__ = ["MAX_CONTINUATION_LINES", "parse_records", "parse_records_around", "unfinished_tail"]

MAX_CONTINUATION_LINES = 8
"""Most physical lines a record split by line breaks in its name may add to its first line."""


def parse_records(
    lines: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[tuple[int, int, JobRecord | ParseError]]:
    """Parse physical ``lines`` into records: ``(first index, number of lines, result)`` each.

    slurmctld writes a record in one ``write()``, line breaks of a job name included, so a record
    start that does not parse on its own (or only as a 17.02 record, which a newer record cut by a
    line break in its working directory looks like) continues on the following lines that do not
    start a record themselves — at most :data:`MAX_CONTINUATION_LINES` of them, within
    ``max_bytes``. The longest run of them that makes one record with it is joined (a 17.02
    record only into a newer one); lines that make none stand alone.

    A name can also hold a line break followed by text that looks like a record start
    (``evil\\nJobId=77 UserId=root(0) …``): read alone, that line would be a record for another job
    carrying this job's fields. So a line that starts a record and stops before ``JobState=``
    (slurmctld never writes such a line: its record goes on after a line break in the name), that
    nothing else completes, is joined with the fewest following lines — record starts included —
    that make one record with it; that record is marked ambiguous.
    """
    return _parse_records(lines, max_bytes, ())  # type: ignore[return-value]


def parse_records_around(
    lines: Sequence[bytes], answered: Container[int], *, max_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[tuple[int, int, JobRecord | ParseError | None]]:
    """:func:`parse_records`, where the lines at the indexes ``answered`` are single-line records
    read already (by the compiled reader): each comes as ``(index, 1, None)`` when its turn comes,
    unless an earlier line's record takes it in (then it is part of that record, as without)."""
    return _parse_records(lines, max_bytes, answered)


def _parse_records(
    lines: Sequence[bytes], max_bytes: int, answered: Container[int]
) -> list[tuple[int, int, JobRecord | ParseError | None]]:
    out: list[tuple[int, int, JobRecord | ParseError | None]] = []
    i = 0
    n = len(lines)
    while i < n:
        if i in answered:
            out.append((i, 1, None))
            i += 1
            continue
        count, result = _record_at(lines, i, max_bytes)
        out.append((i, count, result))
        i += count
    return out


def _record_at(lines: Sequence[bytes], i: int, max_bytes: int) -> tuple[int, JobRecord | ParseError]:
    """The record that starts at ``lines[i]``: how many lines it takes, and what they read as."""
    line = lines[i]
    result = parse_line(line, max_bytes=max_bytes)
    count = 1
    if i + 1 < len(lines) and _may_continue(result):
        more = _continuation(lines, i, max_bytes)
        for k in range(len(more), 0, -1):  # the longest join that is one record
            whole = parse_line(b"".join((line, *more[:k])), max_bytes=max_bytes)
            # A line that is a 17.02 record already is only joined into a newer record:
            # a stray line after an old record is not taken for the rest of its directory.
            if whole.__class__ is JobRecord and (
                result.__class__ is ParseError or whole.generation != "17.02"  # type: ignore[union-attr]
            ):
                result, count = whole, k + 1
                break
        if result.__class__ is ParseError and _headless(line):
            joined = _across_starts(lines, i, max_bytes)
            if joined is not None:
                result, count = joined
    return count, result


def _headless(line: bytes) -> bool:
    """A record start whose line ends before ``JobState=``: its name goes on after a line break."""
    return line.endswith(b"\n") and b" JobState=" not in line and is_record_start(line)


def _across_starts(lines: Sequence[bytes], i: int, max_bytes: int) -> tuple[JobRecord, int] | None:
    """The fewest lines after ``lines[i]``, record starts included, that make one record with it."""
    size = len(lines[i])
    for end in range(i + 1, min(len(lines), i + 1 + MAX_CONTINUATION_LINES)):
        size += len(lines[end])
        if size > max_bytes + 2:
            return None
        whole = parse_line(b"".join(lines[i : end + 1]), max_bytes=max_bytes)
        if whole.__class__ is JobRecord:
            return whole._replace(ambiguous=True), end + 1 - i  # type: ignore[union-attr]
    return None


def _continuation(lines: Sequence[bytes], i: int, max_bytes: int) -> Sequence[bytes]:
    """The lines after ``lines[i]`` that may continue its record: up to the next record start,
    at most :data:`MAX_CONTINUATION_LINES`, within ``max_bytes`` in all."""
    size = len(lines[i])
    end = i + 1
    while end < len(lines) and end - i <= MAX_CONTINUATION_LINES:
        size += len(lines[end])
        if size > max_bytes + 2 or is_record_start(lines[end]):
            break
        end += 1
    return lines[i + 1 : end]


def _may_continue(result: JobRecord | ParseError) -> bool:
    """Whether a line's record may go on in the next lines: it does not parse — or parses only as a
    17.02 record, which a newer record cut by a line break in its working directory looks like."""
    if result.__class__ is ParseError:
        return True
    return result.generation == "17.02"  # type: ignore[union-attr]


def unfinished_tail(
    lines: Sequence[bytes],
    *,
    max_bytes: int = DEFAULT_MAX_LINE_BYTES,
    alone: Callable[[bytes], str | None] | None = None,
) -> int:
    """How many of the last ``lines`` start a record that the lines after them may still complete.

    A reader holds these back until more lines come (or the file stays quiet), so that a record
    with line breaks in its name is joined even when a read or a batch ends in its middle (the
    tailer asks only where the end of what it read may cut a write:
    :data:`jobcompd.tailer.followed.WRITE_CUT`). The earliest such start counts: a name's line
    break may be followed by text that looks like a record start itself.

    ``alone(line)``, if given, is the compiled reader's reading of a line alone (see
    :func:`jobcompd.fastpath.compiled_alone`), so that a line it reads is not parsed again here:
    ``"17.11+"``, a record of 17.11 or later, which completes its record whatever lines come
    after it (see :func:`parse_records`); ``"17.02"``, a 17.02 record, which a next line may still
    make part of a newer record (cut in its working directory); ``None``, the Python reader decides.
    """
    n = len(lines)
    window = min(n, MAX_CONTINUATION_LINES + 1)
    starts = [back for back in range(window, 0, -1) if is_record_start(lines[n - back])]
    for back in starts:
        reading = None if alone is None else alone(lines[n - back])
        if reading == "17.11+":
            continue  # a record alone, whatever follows (it still counts as the last start)
        if reading == "17.02":
            # Lines after a 17.02 record may make it a newer record (complete, then), never an
            # unfinished one: it is held back only while it is the last line (see _record_at).
            if back == 1:
                return back
            continue
        # The lines after it may still complete it (or complete only a 17.02 reading)...
        count, result = _record_at(lines, n - back, max_bytes)
        if result.__class__ is ParseError:
            # ... when nothing else completes it: the last start, or one that stops before its
            # fields (the rest of its name, and its record, come after a line break).
            if back == starts[-1] or _headless(lines[n - back]):
                return back
        elif count == back and _may_continue(result):
            return back
    return 0
