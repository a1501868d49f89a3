"""Records split by line breaks: joining their lines, and holding back one not finished yet.

slurmctld writes a record in one ``write()``, line breaks of a job name (or working directory)
included, so one record can span several physical lines. These functions find them among the
lines read, using :func:`jobcompd.record.parse_line` on the candidates.
"""

from __future__ import annotations

from collections.abc import Sequence

from jobcompd.record import DEFAULT_MAX_LINE_BYTES, JobRecord, ParseError, is_record_start, parse_line

__all__ = ["MAX_CONTINUATION_LINES", "parse_records", "unfinished_tail"]

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
    """
    out: list[tuple[int, int, JobRecord | ParseError]] = []
    i = 0
    n = len(lines)
    while i < n:
        line = lines[i]
        result = parse_line(line, max_bytes=max_bytes)
        count = 1
        if i + 1 < n and _may_continue(result):
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
        out.append((i, count, result))
        i += count
    return out


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


def unfinished_tail(lines: Sequence[bytes], *, max_bytes: int = DEFAULT_MAX_LINE_BYTES) -> int:
    """How many of the last ``lines`` start a record that the lines after them may still complete.

    A reader holds these back until more lines come (or the file stays quiet), so that a record
    with line breaks in its name is joined even when a read or a batch ends in its middle.
    """
    n = len(lines)
    for back in range(1, min(n, MAX_CONTINUATION_LINES + 1) + 1):
        if is_record_start(lines[n - back]):
            # The lines after it do not start a record: while they do not complete it (or
            # complete only a 17.02 reading), the next lines may.
            _, count, result = parse_records(lines[n - back :], max_bytes=max_bytes)[0]
            unfinished = result.__class__ is ParseError or (count == back and _may_continue(result))
            return back if unfinished else 0
    return 0
