"""A line writer that mimics slurmctld's jobcomp/filetxt plugin, generation by generation.

It renders a :class:`FakeJob` (the values slurmctld holds: epochs, ids, raw strings) exactly as the
C format string of each Slurm generation does, including the trailing space and the optional
array / pack / het fields. Tests, the benchmark and the demo reuse it.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

GENERATIONS = ("17.02", "17.11", "20.02", "20.11", "23.02")


@dataclass
class FakeJob:
    """What slurmctld knows about a finished job (``None`` strings print as ``(null)``)."""

    job_id: int = 1
    user: str | None = "alice"
    uid: int = 1001
    group: str | None = "users"
    gid: int = 100
    name: str | None = "job"
    state: str = "COMPLETED"
    partition: str | None = "batch"
    time_limit: int | None = 60  # minutes; None = INFINITE
    start: int = 1_700_000_000  # epochs; 0 = Unknown
    end: int = 1_700_003_600
    nodes: str | None = "node[01-02]"
    node_cnt: int = 2
    cpus: int = 8
    work_dir: str | None = "/home/alice"
    resv: str = ""
    tres: str = "cpu=8,mem=16G,node=2,billing=8"
    account: str = "proj"
    qos: str = "normal"
    wckey: str = ""
    cluster: str | None = "mycluster"
    submit: int = 1_699_999_000  # 0 = unknown
    eligible: int = 1_699_999_100
    array: tuple[int, int] | None = None
    het: tuple[int, int] | None = None  # (het_job_id, het_job_offset); None = 0 (not printed)
    derived_ec: tuple[int, int] = (0, 0)  # (exit, signal)
    exit_code: tuple[int, int] = (0, 0)
    select_text: str = ""  # select-plugin text (before 23.02)
    extra_fields: dict[str, str] = field(default_factory=dict)


def local_time(epoch: int, zone: ZoneInfo) -> str:
    """``_make_time_str()``: ``Unknown`` for 0, else ``%FT%T`` of ``localtime_r()``."""
    if epoch == 0:
        return "Unknown"
    return datetime.fromtimestamp(epoch, zone).strftime("%Y-%m-%dT%H:%M:%S")


def utc_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def _s(value: str | None) -> str:
    return "(null)" if value is None else value


def render(job: FakeJob, generation: str, zone: ZoneInfo) -> bytes:
    """The exact bytes slurmctld of ``generation`` appends for ``job`` (with the ``\\n``)."""
    if generation not in GENERATIONS:
        raise ValueError(generation)
    lim = "UNLIMITED" if job.time_limit is None else str(job.time_limit)
    start = "Unknown" if job.start == 0 or job.start > job.end else local_time(job.start, zone)
    head = (
        f"JobId={job.job_id} UserId={_s(job.user)}({job.uid}) GroupId={_s(job.group)}({job.gid}) "
        f"Name={_s(job.name)} JobState={job.state} Partition={_s(job.partition)} "
        f"TimeLimit={lim} StartTime={start} EndTime={local_time(job.end, zone)} "
        f"NodeList={_s(job.nodes)} NodeCnt={job.node_cnt} ProcCnt={job.cpus} "
        f"WorkDir={'unknown' if job.work_dir is None else job.work_dir}"
    )
    if generation == "17.02":
        return f"{head} {job.select_text}\n".encode("utf-8", "surrogateescape")
    submit = local_time(job.submit, zone) if job.submit else "unknown"
    eligible = local_time(job.eligible, zone) if job.eligible else "unknown"
    array = f" ArrayJobId={job.array[0]} ArrayTaskId={job.array[1]}" if job.array else ""
    het = ""
    if job.het and job.het[0]:
        names = (
            ("PackJobId", "PackJobOffset")
            if generation == "17.11"
            else ("HetJobId", "HetJobOffset")
        )
        het = f" {names[0]}={job.het[0]} {names[1]}={job.het[1]}"
    tres_key = "Gres" if generation in ("17.11", "20.02") else "Tres"
    select = "" if generation == "23.02" else job.select_text
    line = (
        f"{head} ReservationName={job.resv} {tres_key}={job.tres} Account={job.account} "
        f"QOS={job.qos} WcKey={job.wckey} Cluster={'unknown' if job.cluster is None else job.cluster} "
        f"SubmitTime={submit} EligibleTime={eligible}{array}{het} "
        f"DerivedExitCode={job.derived_ec[0]}:{job.derived_ec[1]} "
        f"ExitCode={job.exit_code[0]}:{job.exit_code[1]} {select}\n"
    )
    return line.encode("utf-8", "surrogateescape")


_NAMES = ["train", "sim run", "a=b", "x Name=y", "日本語", "job JobState=FAILED", "123", "."]
_STATES = ["COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"]


def random_job(rng: random.Random, job_id: int, now: int | None = None) -> FakeJob:
    """A plausible job with a realistic mix of names, states, arrays and het jobs."""
    now = now or 1_700_000_000
    end = now + rng.randrange(0, 86400 * 30)
    run = rng.choice([0, 5, 60, 3600, rng.randrange(1, 200_000)])
    start = end - run
    eligible = start - rng.randrange(0, 7200)
    submit = eligible - rng.choice([0, 0, 0, 30, 600])
    cancelled_pending = rng.random() < 0.03
    cpus = rng.choice([1, 2, 4, 8, 32, 128])
    nodes = max(1, cpus // 32)
    return FakeJob(
        job_id=job_id,
        user=rng.choice(["alice", "bob", "carol", None]),
        uid=rng.randrange(1000, 70000),
        group=rng.choice(["users", "hpc", None]),
        gid=rng.randrange(100, 70000),
        name=rng.choice(_NAMES) + str(rng.randrange(1000)),
        state="CANCELLED" if cancelled_pending else rng.choice(_STATES),
        partition=rng.choice(["batch", "gpu", "debug"]),
        time_limit=rng.choice([None, 30, 60, 1440]),
        start=0 if cancelled_pending else start,
        end=end,
        nodes=None if cancelled_pending else f"node[{job_id % 100:03d}-{job_id % 100 + nodes:03d}]",
        node_cnt=0 if cancelled_pending else nodes,
        cpus=cpus,
        work_dir=rng.choice(["/home/alice/project", "/scratch/my dir/run 1", None]),
        resv=rng.choice(["", "", "maint"]),
        tres=f"cpu={cpus},mem={cpus * 2}G,node={nodes},billing={cpus}",
        account=rng.choice(["proj", "chem", ""]),
        qos=rng.choice(["normal", "high"]),
        wckey=rng.choice(["", "wk1"]),
        cluster="mycluster",
        submit=submit,
        eligible=eligible,
        array=(job_id - 3, 3) if rng.random() < 0.2 else None,
        het=(job_id, rng.randrange(0, 3)) if rng.random() < 0.05 else None,
        derived_ec=(rng.choice([0, 0, 1]), 0),
        exit_code=rng.choice([(0, 0), (1, 0), (0, 9)]),
    )


def mixed_lines(count: int, *, seed: int = 1, zone: ZoneInfo | None = None) -> list[bytes]:
    """``count`` lines of random jobs, each in a random generation (same seed, same lines)."""
    rng = random.Random(seed)
    zone = zone or ZoneInfo("UTC")
    return [render(random_job(rng, 1000 + i), rng.choice(GENERATIONS), zone) for i in range(count)]


class SlurmctldWriter:
    """Appends records to a log file the way slurmctld does: O_APPEND, one write loop per record."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]

    def reopen(self) -> None:
        """What ``scontrol reconfigure`` / a logrotate postrotate does: close and reopen the path."""
        os.close(self._fd)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def close(self) -> None:
        os.close(self._fd)

    def __enter__(self) -> SlurmctldWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def now_epoch() -> int:
    return int(time.time())


_HOSTILE_BASE = (
    b"JobId=100 UserId=root(0) GroupId=root(0) Name=%s JobState=COMPLETED Partition=debug "
    b"TimeLimit=UNLIMITED StartTime=2026-11-28T06:45:38 EndTime=2026-11-28T06:45:39 NodeList=vm "
    b"NodeCnt=1 ProcCnt=1 WorkDir=%s ReservationName= Tres=cpu=1,mem=2000M,node=1,billing=1 "
    b"Account=%s QOS= WcKey=%s Cluster=unknown SubmitTime=2026-11-28T06:45:36 "
    b"EligibleTime=2026-11-28T06:45:36 DerivedExitCode=0:0 ExitCode=0:0 \n"
)
_LEGACY_BASE = (
    b"JobId=1 UserId=a(1) GroupId=b(2) Name=x JobState=A Partition=b TimeLimit=1 StartTime=Unknown "
    b"EndTime=Unknown NodeList=n NodeCnt=1 ProcCnt=1 WorkDir=%s\n"
)
_FAKE_RUN = (
    b" JobState=COMPLETED Partition=debug TimeLimit=1 StartTime=Unknown EndTime=Unknown "
    b"NodeList=vm NodeCnt=1 ProcCnt=1 WorkDir="
)


def hostile_lines(size: int = 65_000) -> dict[str, bytes]:
    """Lines of about ``size`` bytes built to make a backtracking parser slow, by shape.

    Values are what users choose (names, directories, accounts, wckeys); each shape repeats a
    fragment that looks like the start of a field run, a select-plugin word or a record's end.
    """

    def fill(fragment: bytes, room: int) -> bytes:
        return fragment * max(1, room // len(fragment))

    room = size - len(_HOSTILE_BASE)
    return {
        "17.02 directory of select-plugin words": _LEGACY_BASE % (fill(b" A=", room) + b" x"),
        "17.02 directory of Key=value words": _LEGACY_BASE % (b"/" + fill(b" A=b", room)),
        "names of field runs": _HOSTILE_BASE % (fill(b" JobState=A Partition=b", room), b"/w", b"", b""),
        "names of fake copies": _HOSTILE_BASE % (fill(_FAKE_RUN, room), b"/w", b"", b""),
        "directory of fake tails": _HOSTILE_BASE
        % (b"j", fill(b" ReservationName= Tres= Account=", room), b"", b""),
        "accounts and wckeys of tails": _HOSTILE_BASE
        % (b"j", b"/w", fill(b" ReservationName= Tres= Account=", room // 2), fill(b" QOS= WcKey=", room // 2)),
        "wckey of fake ends": _HOSTILE_BASE
        % (b"j", b"/w", b"", fill(b" Cluster=x SubmitTime=unknown EligibleTime=unknown "
                                  b"DerivedExitCode=0:0 ExitCode=0:0", room)),
        "name of parentheses": _HOSTILE_BASE % (fill(b"((((", room), b"/w", b"", b""),
    }


def page_filler(written: int, cut: bytes) -> bytes:
    """A whole record of the length that makes it and ``cut``, written after ``written`` bytes, end
    on a page boundary: the only place a reader can see one of slurmctld's ``write()`` calls cut
    (:data:`jobcompd.tailer.followed.WRITE_CUT`), so where a test may cut a record's write."""
    from jobcompd.tailer.followed import WRITE_CUT

    bare = len(_HOSTILE_BASE % (b"page", b"/w", b"", b""))
    room = -(written + bare + len(cut)) % WRITE_CUT
    return _HOSTILE_BASE % (b"page" + b"p" * room, b"/w", b"", b"")


def ordinary_line() -> bytes:
    """The line the hostile ones are measured against: the same record with short values."""
    return _HOSTILE_BASE % (b"job", b"/home/alice", b"proj", b"")
