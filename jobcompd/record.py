"""One ``jobcomp/filetxt`` record (bytes) → :class:`JobRecord`, or a :class:`ParseError` with a reason.

slurmctld writes the values raw — no quoting, no escaping — so the text a user or an admin chose
(``Name=``, ``WorkDir=``, ``Account=``, ``WcKey=``) may hold spaces, ``=``, line breaks and text that
looks like another ``Key=``. A record is therefore read by the fixed key sequence of its generation:
it is cut at the keys that end a free value into *runs* of fields whose values have strict shapes
(no spaces, numbers, times), and every place where such a run can start is found once:

* the end run (``Cluster=`` … ``ExitCode=``) is the *last* one of the record: nothing a user
  types comes after it;
* the working directory ends at the *last* well-formed ``ReservationName= Tres= Account=`` run,
  the account at the *first* well-formed ``QOS= WcKey=`` run after it;
* the job name ends at a well-formed ``JobState=`` … ``WorkDir=`` run. When a name or a working
  directory holds a complete fake copy of that run, the record has several readings: the one whose
  own values are consistent (submit ≤ start ≤ end, submit ≤ eligible, a node count that agrees
  with the node list and the CPU count) is taken, and of several consistent ones the one with the
  longest name. Such a record is marked :attr:`JobRecord.ambiguous`.

Every step is a bounded number of anchored matches per occurrence of a key, so the time is linear
in the length of the record, whatever it holds. Numbers beyond what Slurm stores (32-bit ids and
counts) are errors with a reason, never an exception.

A record whose name holds a line break spans several physical lines; :mod:`jobcompd.joining`
joins them. Invalid UTF-8 bytes are replaced by U+FFFD in the decoded values; the
record id is computed from the raw bytes, so nothing about the record's identity is lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

__all__ = [
    "DEFAULT_MAX_LINE_BYTES",
    "JobRecord",
    "ParseError",
    "is_record_start",
    "parse_line",
]

DEFAULT_MAX_LINE_BYTES = 65536
"""Longest record accepted, line ending excluded; a longer one is quarantined."""

# slurmctld's printf of a NULL string.
_NULL = "(null)"
_U32_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class ParseError:
    """A line that is not a job record, with the reason an operator can act on."""

    reason: str


class JobRecord(NamedTuple):
    """One finished job as the filetxt line tells it.

    Times are the log's local wall-clock text ``YYYY-MM-DDTHH:MM:SS`` (validated), or ``None`` when
    slurmctld wrote ``Unknown``/``unknown``. Strings are ``None`` where slurmctld printed a NULL
    string (``(null)``) or its "absent" word (``unknown`` work dir/cluster, an empty account…);
    fields of newer generations are ``None`` on lines that do not carry them. ``ambiguous`` is true
    when the line had more than one reading (fake fields in a name, a directory or an account).
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
    ambiguous: bool = False


_TIME = r"\d{4}-\d\d-\d\dT\d\d:[0-5]\d:[0-5]\d|Unknown|unknown|None"
_EC = r"-?\d{1,10}(?::-?\d{1,10})?"
_ID = r"(\d+)"
# The runs of strict fields, each matched where its first key was found (anchored, no search).
_START = re.compile(rf"JobId={_ID} UserId=(\S*)\({_ID}\) GroupId=(\S*)\({_ID}\) Name=")
_RUN = re.compile(
    r"JobState=([A-Z_]+)"
    r" Partition=(\S*)"
    r" TimeLimit=(\d+|[A-Za-z_]+)"
    rf" StartTime=({_TIME})"
    rf" EndTime=({_TIME})"
    r" NodeList=(\S*)"
    rf" NodeCnt={_ID}"
    rf" (?:ProcCnt|Procs)={_ID}"
    r" WorkDir="
)
_RESV = re.compile(r"ReservationName=(\S*) (Gres|Tres)=(\S*) Account=")
_QOS = re.compile(r"QOS=(\S*) WcKey=")
_END = re.compile(
    r"Cluster=(\S*)"
    rf" SubmitTime=({_TIME})"
    rf" EligibleTime=({_TIME})"
    rf"(?: ArrayJobId={_ID} ArrayTaskId={_ID})?"
    rf"(?: (?:PackJobId|HetJobId)={_ID} (?:PackJobOffset|HetJobOffset)={_ID})?"
    rf" DerivedExitCode=({_EC})"
    rf" ExitCode=({_EC})"
    r"((?: [^\n]*)?)\Z"
)
# The whole record when each key that ends a free value occurs once (see _read).
_ONE_READING = re.compile(
    f"{_START.pattern}(.*?) {_RUN.pattern}(.*?) {_RESV.pattern}(.*?) {_QOS.pattern}(.*?) {_END.pattern}",
    re.DOTALL,
)
_SELECT_WORD = re.compile(r"[A-Z][A-Za-z_]*=\S*")
_RECORD_START = re.compile(r"JobId=\d+ UserId=\S*\(\d+\) GroupId=")
_INNER_START = re.compile(r"(?<!\n)JobId=\d+ UserId=\S*\(\d+\) GroupId=")
_NOT_SET = frozenset(("", _NULL))
_NO_WORK_DIR = frozenset(("unknown", _NULL))
_NO_CLUSTER = frozenset(("", "unknown", _NULL))
_FOLD_SLACK = 3600  # seconds a DST fold can put a later local time before an earlier one

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


def is_record_start(line: bytes) -> bool:
    """Whether ``line`` begins the way every record begins (``JobId=N UserId=…(N) GroupId=``)."""
    return line.startswith(b"JobId=") and _RECORD_START.match(line.decode(errors="replace")) is not None


def parse_line(line: bytes, *, max_bytes: int = DEFAULT_MAX_LINE_BYTES) -> JobRecord | ParseError:
    """Parse one record (with or without its final ``\\n``) into a :class:`JobRecord`.

    ``line`` may hold the line breaks of a name that spans physical lines (see :func:`parse_records`).
    Never raises for bad input: anything that is not a complete record of a known generation is a
    :class:`ParseError` whose ``reason`` says what is wrong. ``max_bytes`` bounds the record
    without its line ending.
    """
    if line[-1:] == b"\n":
        line = line[:-2] if line[-2:] == b"\r\n" else line[:-1]
    if len(line) > max_bytes:
        return ParseError(f"line longer than {max_bytes} bytes ({len(line)})")
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
    # A record start inside a line is a write cut short, then the next record: never one job.
    # (One right after a line break is a name's own text: joining.parse_records decides.)
    if text.find("JobId=", 1) > 0 and _INNER_START.search(text, 1) is not None:
        return ParseError(_diagnose(text))
    result = _one_reading(text)
    if result is None:
        start = _START.match(text)
        result = None if start is None else _read(text, start)
        if result is None:
            return ParseError(_diagnose(text))
    return result


def _one_reading(text: str) -> JobRecord | ParseError | None:
    """The usual record, which names each key that ends a free value once: it has one reading,
    found by one anchored match (a free value can only end where its key stands). ``None`` for
    any other line."""
    if (
        text.count(" JobState=") == 1
        and text.count(" ReservationName=") == 1
        and text.count(" QOS=") == 1
        and text.count(" Cluster=") == 1
    ):
        m = _ONE_READING.match(text)
        if m is not None:
            g = m.groups()
            return _assemble(g[:5], g[5], g[6:14], g[14], g[15:18], g[18], g[19], g[20], g[21:], False)
    return None


def _read(text: str, start: re.Match[str]) -> JobRecord | ParseError | None:
    """The best reading of ``text`` after its ``Name=``, or ``None`` when there is none."""
    name_at = start.end()
    end = _last_end(text, name_at)
    if end is None:
        return _legacy(text, start)
    ends_found, end_m = end
    qos = _matches(text, " QOS=", _QOS, name_at, end_m.start() - 1)
    if not qos:
        return None
    last_qos = qos[-1].start() - 1
    resv = _matches(text, " ReservationName=", _RESV, name_at, last_qos)
    if not resv:
        return None
    resv_m = resv[-1]
    qos_m = next(m for m in qos if m.start() - 1 >= resv_m.end())
    runs = _matches(text, " JobState=", _RUN, name_at, resv_m.start() - 1)
    if not runs:
        return None
    submit, eligible = end_m.group(2), end_m.group(3)
    run = _choose(runs, lambda m: _inconsistency(m, submit, eligible))
    return _assemble(
        start.groups(),
        text[name_at : run.start() - 1],
        run.groups(),
        text[run.end() : resv_m.start() - 1],
        resv_m.groups(),
        text[resv_m.end() : qos_m.start() - 1],
        qos_m.group(1),
        text[qos_m.end() : end_m.start() - 1],
        end_m.groups(),
        len(runs) > 1 or ends_found > 1 or len(resv) > 1 or len(qos) > 1,
    )


def _matches(
    text: str, key: str, pattern: re.Pattern[str], lo: int, hi: int
) -> list[re.Match[str]]:
    """Each well-formed run that starts at an occurrence of ``key`` (its space at ``lo`` or later)
    and whose match ends at or before ``hi`` — the space of the key that must follow."""
    found = []
    at = text.find(key, lo, hi)
    while at >= 0:
        m = pattern.match(text, at + 1)
        if m is not None and m.end() <= hi:
            found.append(m)
        at = text.find(key, at + 1, hi)
    return found


def _last_end(text: str, lo: int) -> tuple[int, re.Match[str]] | None:
    """The record's end run, the last well-formed one, and how many well-formed ones there are."""
    found = 0
    last = None
    at = text.rfind(" Cluster=", lo)
    while at >= 0:
        m = _END.match(text, at + 1)
        if m is not None:
            found += 1
            if last is None:
                last = m
            if found > 1:
                break  # enough to know there was a choice
        at = text.rfind(" Cluster=", lo, at)
    return None if last is None else (found, last)


def _choose(runs: Sequence[re.Match[str]], inconsistency: Callable[[re.Match[str]], int]) -> re.Match[str]:
    """The run with the fewest inconsistencies; of several, the last (the longest name)."""
    if len(runs) == 1:
        return runs[0]
    best = runs[-1]
    best_score = inconsistency(best)
    for m in reversed(runs[:-1]):
        score = inconsistency(m)
        if score < best_score:
            best, best_score = m, score
    return best


def _epoch(value: str | None) -> float | None:
    if value is None or value[0] > "9":
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _inconsistency(run: re.Match[str], submit: str | None, eligible: str | None) -> int:
    """How many of its own facts a reading of the fixed fields contradicts (0: consistent)."""
    _state, _part, _limit, start_s, end_s, nodes, ncnt_s, cpus_s = run.groups()
    bad = 0
    times = [_epoch(v) for v in (submit, eligible, start_s, end_s)]
    for text, value in zip((submit, eligible, start_s, end_s), times, strict=True):
        if value is None and text is not None and text[0] <= "9":
            bad += 1  # not a calendar time
    sub, eli, sta, end = times
    for early, late in ((sub, eli), (sub, sta), (sub, end), (sta, end)):
        if early is not None and late is not None and late < early - _FOLD_SLACK:
            bad += 1
    ncnt = int(ncnt_s) if len(ncnt_s) <= 10 else -1
    cpus = int(cpus_s) if len(cpus_s) <= 10 else -1
    if (nodes == _NULL) != (ncnt == 0):
        bad += 1
    if ncnt > cpus > 0 or ncnt < 0 or cpus < 0:
        bad += 1
    return bad


def _legacy(text: str, start: re.Match[str]) -> JobRecord | ParseError | None:
    """A record of 17.02 or older: the fixed run, then the directory and select-plugin text."""
    name_at = start.end()
    # A legacy line never has the 17.11 tail after its WorkDir=; one that does is a broken
    # modern line, not an old one with a strange directory.
    tail_at = text.rfind(" ReservationName=", name_at)
    runs = [m for m in _matches(text, " JobState=", _RUN, name_at, len(text)) if m.end() > tail_at]
    if not runs:
        return None
    run = _choose(runs, lambda m: _inconsistency(m, None, None))
    work_dir, extra = _split_select_text(text[run.end() :])
    return _assemble(
        start.groups(), text[name_at : run.start() - 1], run.groups(), work_dir, None, "", "", "",
        None, len(runs) > 1, extra,
    )


def _split_select_text(rest: str) -> tuple[str, str]:
    """``WorkDir=%s %s``: the directory, then select-plugin ``Key=value`` words (usually none)."""
    if rest.endswith(" "):
        rest = rest[:-1]
    cut = len(rest)
    while True:
        space = rest.rfind(" ", 0, cut)
        if space < 0 or _SELECT_WORD.fullmatch(rest, space + 1, cut) is None:
            break
        cut = space
    return rest[:cut], rest[cut:].strip()


def _out_of_range(numbers: Sequence[tuple[str, str | None]]) -> ParseError | None:
    """The first number beyond 32 bits, as an error (the slow path: only long numbers get here)."""
    for key, value in numbers:
        if value is not None and (len(value) > 10 or int(value) > _U32_MAX):
            shown = value[:24] + ("…" if len(value) > 24 else "")
            return ParseError(f"{key}={shown} is out of range (32 bits)")
    return None


def _bad_time(values: Sequence[tuple[str, str | None]]) -> ParseError | None:
    """The first time that is not a calendar time (``Unknown`` and the like are not times)."""
    for key, value in values:
        if value is not None and value[0] <= "9":
            hour = value[:13]
            if not (_valid_hours.get(hour) or _valid_hour(hour)):
                return ParseError(f"invalid {key} {value!r}")
    return None


def _assemble(
    start: Sequence[str],
    name: str,
    run: Sequence[str],
    work_dir: str,
    resv: Sequence[str] | None,
    account: str,
    qos_name: str,
    wckey: str,
    end: Sequence[str | None] | None,
    ambiguous: bool,
    legacy_extra: str = "",
) -> JobRecord | ParseError:
    """The record of one reading: the groups of its runs and the text of its free values
    (``resv`` and ``end`` are None for a 17.02 record)."""
    jobid, user, uid, group, gid = start
    state, part, limit, start_s, end_s, nodes, ncnt, cpus = run
    numbered_limit = limit[0] <= "9"
    if end is None:
        submit_s = eligible_s = array_job = array_task = het_id = het_offset = None
    else:
        (_, submit_s, eligible_s, array_job, array_task, het_id, het_offset, *_) = end
    # Up to 9 digits always fit in 32 bits: only longer numbers need a closer look.
    if (
        len(jobid) > 9 or len(uid) > 9 or len(gid) > 9 or len(ncnt) > 9 or len(cpus) > 9
        or (numbered_limit and len(limit) > 9)
        or (array_job is not None and (len(array_job) > 9 or len(array_task) > 9))  # type: ignore[arg-type]
        or (het_id is not None and (len(het_id) > 9 or len(het_offset) > 9))  # type: ignore[arg-type]
    ):
        error = _out_of_range(
            (
                ("JobId", jobid), ("UserId", uid), ("GroupId", gid), ("NodeCnt", ncnt),
                ("ProcCnt", cpus), ("TimeLimit", limit if numbered_limit else None),
                ("ArrayJobId", array_job), ("ArrayTaskId", array_task), ("HetJobId", het_id),
                ("HetJobOffset", het_offset),
            )
        )
        if error is not None:
            return error
    # Each time's hour is checked once per log hour (cached); a new hour takes the slow path.
    hours = _valid_hours
    if (
        (start_s[0] <= "9" and not hours.get(start_s[:13]))
        or (end_s[0] <= "9" and not hours.get(end_s[:13]))
        or (submit_s is not None and submit_s[0] <= "9" and not hours.get(submit_s[:13]))
        or (eligible_s is not None and eligible_s[0] <= "9" and not hours.get(eligible_s[:13]))
    ):
        error = _bad_time(
            (("StartTime", start_s), ("EndTime", end_s), ("SubmitTime", submit_s),
             ("EligibleTime", eligible_s))
        )
        if error is not None:
            return error
    values: list[object] = [
        int(jobid),
        None if user == _NULL else user,
        int(uid),
        None if group == _NULL else group,
        int(gid),
        name,
        state,
        None if part == _NULL else part,
        int(limit) if numbered_limit else None,
        None if start_s[0] > "9" else start_s,
        None if end_s[0] > "9" else end_s,
        None if nodes == _NULL else nodes,
        int(ncnt),
        int(cpus),
        None if work_dir in _NO_WORK_DIR else work_dir,
    ]
    if end is None:
        return JobRecord._make((*values, "17.02", *_LEGACY_DEFAULTS[:-2], legacy_extra, ambiguous))
    assert resv is not None
    resv_name, tres_key, tres = resv
    cluster, *_, derived, exit_code, extra = end
    assert derived is not None and exit_code is not None and extra is not None
    values += (
        "20.11" if tres_key == "Tres" else "17.11",
        None if resv_name in _NOT_SET else resv_name,
        None if tres in _NOT_SET else tres,
        None if account in _NOT_SET else account,
        None if qos_name in _NOT_SET else qos_name,
        None if wckey in _NOT_SET else wckey,
        None if cluster in _NO_CLUSTER else cluster,
        None if submit_s[0] > "9" else submit_s,  # type: ignore[index]
        None if eligible_s[0] > "9" else eligible_s,  # type: ignore[index]
        None if array_job is None else int(array_job),
        None if array_task is None else int(array_task),
        0 if het_id is None else int(het_id),
        0 if het_offset is None else int(het_offset),
        derived if ":" in derived else _exit_status(derived),
        exit_code if ":" in exit_code else _exit_status(exit_code),
        extra.strip(),
        ambiguous,
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
        return (
            f"a second record starts at character {second.start()}: "
            "an earlier write was cut short and two records share one line"
        )
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
    if "\n" in text:
        return "embedded newline where a record cannot hold one"
    return "malformed field value (fields present but a value does not have its expected shape)"
