"""One ``jobcomp/filetxt`` line (bytes) → :class:`JobRecord`, or a :class:`ParseError` with a reason.

slurmctld writes the values raw — no quoting, no escaping — so ``Name=`` and ``WorkDir=`` may hold
spaces, ``=`` and text that looks like another ``Key=``. The line is therefore matched against the
fixed key sequence of each Slurm generation, with strict value shapes for every fixed field, rather
than split on spaces:

* the job name is the *shortest* text after ``Name=`` that is followed by a well-formed run of the
  fixed fields up to ``WorkDir=``;
* the working directory is the *longest* text after ``WorkDir=`` that is followed by a well-formed
  tail (``ReservationName=`` … ``ExitCode=``), because the tail ends the line (17.11 and later).

A line is genuinely ambiguous only when a job name holds a complete fake copy of the fixed fields
between ``Name=`` and ``WorkDir=``; the shortest name is taken then.

Invalid UTF-8 bytes (job names are arbitrary user bytes) are replaced by U+FFFD in the decoded
values; the record id is computed from the raw bytes, so nothing about the line's identity is lost.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

__all__ = ["DEFAULT_MAX_LINE_BYTES", "JobRecord", "ParseError", "parse_line"]

DEFAULT_MAX_LINE_BYTES = 65536
"""Longest line accepted; a longer one is quarantined (slurmctld's own records stay far below)."""

# Fields whose plugin JSON value is null/absent when slurmctld printed a NULL string.
_NULL = "(null)"


@dataclass(frozen=True, slots=True)
class ParseError:
    """A line that is not a job record, with the reason an operator can act on."""

    reason: str


class JobRecord(NamedTuple):
    """One finished job as the filetxt line tells it.

    Times are the log's local wall-clock text ``YYYY-MM-DDTHH:MM:SS`` (validated), or ``None`` when
    slurmctld wrote ``Unknown``/``unknown``. Strings are ``None`` where slurmctld printed a NULL
    string (``(null)``) or its "absent" word (``unknown`` work dir/cluster, an empty account…);
    fields of newer generations are ``None`` on lines that do not carry them.
    """

    jobid: int
    username: str | None
    user_id: int
    groupname: str | None
    group_id: int
    name: str | None
    state: str
    partition: str | None
    time_limit_min: int | None  # None: UNLIMITED (or another non-numeric word)
    start: str | None
    end: str | None
    nodes: str | None
    node_count: int
    cpus: int
    work_dir: str | None
    generation: str  # line format: "17.02" (and older), "17.11" (Gres=), "20.11" (Tres=)
    reservation: str | None = None
    tres: str | None = None
    account: str | None = None
    qos: str | None = None
    wckey: str | None = None
    cluster: str | None = None
    submit: str | None = None
    eligible: str | None = None
    array_job_id: int | None = None
    array_task_id: int | None = None
    het_job_id: int = 0
    het_job_offset: int = 0
    derived_ec: str | None = None
    exit_code: str | None = None
    extra: str = ""  # trailing select-plugin text, kept for completeness, not sent


_TIME = r"\d{4}-\d\d-\d\dT\d\d:[0-5]\d:[0-5]\d|Unknown|unknown|None"
_EC = r"-?\d+(?::-?\d+)?"
# Everything up to WorkDir's value, matched up to the tail (or the end of a legacy line).
_HEAD = re.compile(
    r"JobId=(\d+)"
    r" UserId=(\S*)\((\d+)\)"
    r" GroupId=(\S*)\((\d+)\)"
    r" Name=(.*?)"
    r" JobState=([A-Z_]+)"
    r" Partition=(\S*)"
    r" TimeLimit=(\d+|[A-Za-z_]+)"
    rf" StartTime=({_TIME})"
    rf" EndTime=({_TIME})"
    r" NodeList=(\S*)"
    r" NodeCnt=(\d+)"
    r" (?:ProcCnt|Procs)=(\d+)"
    r" WorkDir=(.*)\Z",
    re.DOTALL,
)
# 17.11 and later: the fixed tail after WorkDir. Its values hold no spaces, so the *last*
# " ReservationName=" of a line is the real one, whatever the working directory contains.
_TAIL_KEY = " ReservationName="
_TAIL = re.compile(
    r" ReservationName=(\S*)"
    r" (Gres|Tres)=(\S*)"
    r" Account=(\S*)"
    r" QOS=(\S*)"
    r" WcKey=(\S*)"
    r" Cluster=(\S*)"
    rf" SubmitTime=({_TIME})"
    rf" EligibleTime=({_TIME})"
    r"(?: ArrayJobId=(\d+) ArrayTaskId=(\d+))?"
    r"(?: (?:PackJobId|HetJobId)=(\d+) (?:PackJobOffset|HetJobOffset)=(\d+))?"
    rf" DerivedExitCode=({_EC})"
    rf" ExitCode=({_EC})"
    r"(?: (.*?))? ?\Z",
    re.DOTALL,
)
# Up to 17.02 the line ends "WorkDir=%s %s": the directory, then select-plugin text
# (BlueGene/Cray ``Key=value`` words, usually empty).
_LEGACY_WORKDIR = re.compile(r"(.*?)((?: [A-Z][A-Za-z_]*=\S*)*) ?\Z", re.DOTALL)
_RECORD_START = re.compile(r"JobId=\d+ UserId=\S*\(\d+\) GroupId=")
_NOT_SET = frozenset(("", _NULL))
_NO_WORK_DIR = frozenset(("unknown", _NULL))
_NO_CLUSTER = frozenset(("", "unknown", _NULL))

_valid_hours: dict[str, bool] = {}


def _valid_hour(hour: str) -> bool:
    """Whether ``YYYY-MM-DDTHH`` is a real calendar hour (cached: a log repeats its hours)."""
    ok = _valid_hours.get(hour)
    if ok is None:
        try:
            datetime(int(hour[:4]), int(hour[5:7]), int(hour[8:10]), int(hour[11:13]))
            ok = True
        except ValueError:
            ok = False
        if len(_valid_hours) > 200_000:
            _valid_hours.clear()
        _valid_hours[hour] = ok
    return ok


def _exit_status(text: str) -> str:
    """``exit:signal`` as the plugin prints it; a raw wait status (a 17.11 pre-release) decoded."""
    if ":" in text:
        return text
    status = int(text)
    if status & 0x7F and (status & 0x7F) != 0x7F:  # WIFSIGNALED
        return f"0:{status & 0x7F}"
    return f"{(status >> 8) & 0xFF}:0"


def parse_line(line: bytes, *, max_bytes: int = DEFAULT_MAX_LINE_BYTES) -> JobRecord | ParseError:
    """Parse one log line (with or without its ``\\n``) into a :class:`JobRecord`.

    Never raises for bad input: anything that is not a complete record of a known generation is a
    :class:`ParseError` whose ``reason`` says what is wrong.
    """
    if len(line) > max_bytes:
        return ParseError(f"line longer than {max_bytes} bytes ({len(line)})")
    if line[-1:] == b"\n":
        line = line[:-2] if line[-2:] == b"\r\n" else line[:-1]
    if b"\x00" in line:
        return ParseError("line contains NUL bytes")
    try:
        text = line.decode()
    except UnicodeDecodeError:
        text = line.decode(errors="replace")
    if not text.startswith("JobId="):
        if not text.strip():
            return ParseError("empty line")
        return ParseError("not a jobcomp/filetxt record (no leading JobId=)")
    if "\n" in text:
        return ParseError("embedded newline")
    parts = _split(text)
    if parts is None:
        return ParseError(_diagnose(text))
    g, t = parts
    # Only the free-text values (name, directory, select-plugin text) can hide the start of
    # another record: a write cut short, then the next record on the same line.
    if "JobId=" in g[5] or "JobId=" in g[14] or (t is not None and t[15] and "JobId=" in t[15]):
        second = _RECORD_START.search(text, 1)
        if second is not None:
            return _two_records(second.start())
    if t is None:
        return _legacy(g)
    return _assemble(g, t, t[15])


def _split(text: str) -> tuple[tuple[str, ...], tuple[str | None, ...] | None] | None:
    """The head's groups and the 17.11+ tail's groups (``None`` for a legacy line)."""
    cut = text.rfind(_TAIL_KEY)
    if cut > 0:
        head = _HEAD.match(text, 0, cut)
        tail = _TAIL.match(text, cut)
        if head is not None and tail is not None:
            return head.groups(), tail.groups()
    head = _HEAD.match(text)
    # A legacy line never has the 17.11 tail after its WorkDir=; one that does is a broken
    # modern line, not an old one with a strange directory.
    if head is None or _TAIL_KEY in head.group(15):
        return None
    return head.groups(), None


def _two_records(at: int) -> ParseError:
    return ParseError(
        f"a second record starts at character {at}: "
        "an earlier write was cut short and two records share one line"
    )


def _time(value: str, key: str) -> str | None | ParseError:
    if value[0] > "9":  # Unknown / unknown / None
        return None
    if _valid_hours.get(value[:13]) or _valid_hour(value[:13]):
        return value
    return ParseError(f"invalid {key} {value!r}")


def _legacy(g: tuple[str, ...]) -> JobRecord | ParseError:
    m = _LEGACY_WORKDIR.match(g[14])
    assert m is not None  # the pattern matches any text
    work_dir, extra = m.groups()
    return _assemble((*g[:14], work_dir), None, extra)


def _assemble(
    g: tuple[str, ...], t: tuple[str | None, ...] | None, extra: str | None
) -> JobRecord | ParseError:
    (jobid, user, uid, group, gid, name, state, part, limit, start, end, nodes, ncnt, cpus, wd) = g
    start_t = _time(start, "StartTime")
    end_t = _time(end, "EndTime")
    if start_t.__class__ is ParseError:
        return start_t  # type: ignore[return-value]
    if end_t.__class__ is ParseError:
        return end_t  # type: ignore[return-value]
    values: list[object] = [
        int(jobid),
        None if user == _NULL else user,
        int(uid),
        None if group == _NULL else group,
        int(gid),
        None if name == _NULL else name,
        state,
        None if part == _NULL else part,
        int(limit) if limit[0] <= "9" else None,
        start_t,
        end_t,
        None if nodes == _NULL else nodes,
        int(ncnt),
        int(cpus),
        None if wd in _NO_WORK_DIR else wd,
    ]
    if t is None:
        values.append("17.02")
        values.extend(_LEGACY_DEFAULTS)
        values[-1] = extra.strip() if extra else ""
        return JobRecord._make(values)
    (
        resv,
        tres_key,
        tres,
        account,
        qos,
        wckey,
        cluster,
        submit,
        eligible,
        array_job,
        array_task,
        het_id,
        het_offset,
        derived,
        exit_code,
        _,
    ) = t
    submit_t = _time(submit, "SubmitTime")  # type: ignore[arg-type]
    eligible_t = _time(eligible, "EligibleTime")  # type: ignore[arg-type]
    if submit_t.__class__ is ParseError:
        return submit_t  # type: ignore[return-value]
    if eligible_t.__class__ is ParseError:
        return eligible_t  # type: ignore[return-value]
    values += (
        "20.11" if tres_key == "Tres" else "17.11",
        None if resv in _NOT_SET else resv,
        None if tres in _NOT_SET else tres,
        None if account in _NOT_SET else account,
        None if qos in _NOT_SET else qos,
        None if wckey in _NOT_SET else wckey,
        None if cluster in _NO_CLUSTER else cluster,
        submit_t,
        eligible_t,
        None if array_job is None else int(array_job),
        None if array_task is None else int(array_task),
        0 if het_id is None else int(het_id),
        0 if het_offset is None else int(het_offset),
        derived if ":" in derived else _exit_status(derived),  # type: ignore[operator,arg-type]
        exit_code if ":" in exit_code else _exit_status(exit_code),  # type: ignore[operator,arg-type]
        extra.strip() if extra else "",
    )
    return JobRecord._make(values)


_LEGACY_DEFAULTS = tuple(JobRecord._field_defaults.values())

_KEYS = [
    "JobId",
    "UserId",
    "GroupId",
    "Name",
    "JobState",
    "Partition",
    "TimeLimit",
    "StartTime",
    "EndTime",
    "NodeList",
    "NodeCnt",
]


def _diagnose(text: str) -> str:
    """Say which part of the fixed key sequence is missing or malformed (the slow, rare path)."""
    second = _RECORD_START.search(text, 1)
    if second is not None:
        return _two_records(second.start()).reason
    pos = 0
    for key in _KEYS:
        found = text.find(key + "=", pos)
        if found < 0:
            return f"missing {key}= (truncated or not a record)"
        pos = found + len(key) + 1
    if "ProcCnt=" not in text and "Procs=" not in text:
        return "missing ProcCnt= (truncated or not a record)"
    if "WorkDir=" not in text:
        return "missing WorkDir= (truncated or not a record)"
    if "ReservationName=" in text and "ExitCode=" not in text:
        return "truncated record: 17.11+ fields end before ExitCode="
    return "malformed field value (fields present but a value does not have its expected shape)"
