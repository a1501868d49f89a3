"""Parser: every Slurm generation, hostile values, and a corpus of bad input."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from jobcompd import record as record_module
from jobcompd.encode import Encoder
from jobcompd.joining import MAX_CONTINUATION_LINES, parse_records, unfinished_tail
from jobcompd.record import (
    DEFAULT_MAX_LINE_BYTES,
    JobRecord,
    ParseError,
    parse_line,
)
from tests.slurmctld import (
    GENERATIONS,
    FakeJob,
    hostile_lines,
    local_time,
    mixed_lines,
    render,
    utc_time,
)

UTC = ZoneInfo("UTC")


def parsed(line: bytes) -> JobRecord:
    record = parse_line(line)
    assert isinstance(record, JobRecord), record
    return record


# --- hand-picked cases ------------------------------------------------------------------------


def test_fake_keys_inside_name_and_workdir() -> None:
    job = FakeJob(
        name="x JobState=FAILED Partition=evil TimeLimit=1 = ==",
        work_dir="/home/a ReservationName=r Tres=cpu=1 Account=x QOS=y WcKey= Cluster=z "
        "SubmitTime=unknown EligibleTime=unknown DerivedExitCode=0:0 ExitCode=0:0 /sub",
    )
    for generation in GENERATIONS[1:]:
        r = parsed(render(job, generation, UTC))
        assert r.name == job.name
        assert r.work_dir == job.work_dir
        assert r.state == "COMPLETED" and r.account == "proj" and r.cluster == "mycluster"


def test_generations_are_recognised() -> None:
    job = FakeJob(het=(5, 1), array=(4, 2))
    kinds = {g: parsed(render(job, g, UTC)) for g in GENERATIONS}
    assert kinds["17.02"].generation == "17.02" and kinds["17.02"].account is None
    assert kinds["17.11"].generation == "17.11" and kinds["17.11"].het_job_id == 5
    assert kinds["20.02"].generation == "17.11" and kinds["20.02"].tres == job.tres
    assert kinds["20.11"].generation == "20.11" and kinds["20.11"].het_job_offset == 1
    assert kinds["23.02"].array_job_id == 4 and kinds["23.02"].array_task_id == 2


def test_trailing_space_optional_and_crlf() -> None:
    line = render(FakeJob(), "23.02", UTC)
    assert parsed(line) == parsed(line.rstrip(b" \n")) == parsed(line[:-1] + b"\r\n")


def test_null_strings_and_unknown_words() -> None:
    job = FakeJob(
        user=None,
        group=None,
        nodes=None,
        partition=None,
        name=None,
        work_dir=None,
        cluster=None,
        submit=0,
        eligible=0,
        start=0,
    )
    r = parsed(render(job, "23.02", UTC))
    assert (r.username, r.groupname, r.nodes, r.partition) == (None,) * 4
    assert (r.work_dir, r.cluster, r.submit, r.eligible, r.start) == (None,) * 5
    # A job name reads "(null)" only when a job is named so: the plugin sends it as it is.
    assert r.name == "(null)"
    d = json.loads(Encoder(UTC).encode(r))
    assert d["username"] is None and d["nodes"] is None and d["partition"] is None
    assert d["job_name"] == "(null)" and "work_dir" not in d and "cluster" not in d
    assert "@start" not in d and "@submit" not in d and "@queue_wait" not in d


def test_procs_and_select_plugin_text_on_legacy_lines() -> None:
    line = render(FakeJob(select_text="Connection=TORUS Reboot=no"), "17.02", UTC)
    r = parsed(line.replace(b" ProcCnt=", b" Procs="))
    assert r.cpus == 8 and r.work_dir == "/home/alice" and r.extra == "Connection=TORUS Reboot=no"


def test_raw_exit_status_of_17_11_prerelease() -> None:
    line = render(FakeJob(), "17.11", UTC)
    line = line.replace(b"DerivedExitCode=0:0 ExitCode=0:0", b"DerivedExitCode=256 ExitCode=9")
    r = parsed(line)
    assert (r.derived_ec, r.exit_code) == ("1:0", "0:9")


def test_unlimited_and_number_names() -> None:
    r = parsed(render(FakeJob(time_limit=None, name="42", user="1234"), "20.11", UTC))
    assert r.time_limit_min is None and r.name == "42" and r.username == "1234"
    d = json.loads(Encoder(UTC).encode(r))
    assert "time_limit" not in d and d["job_name"] == "42" and d["username"] == "1234"


def test_non_utf8_bytes_become_replacement_characters() -> None:
    line = render(FakeJob(name="n\udcff\udce9x", work_dir="/d\udcc3"), "23.02", UTC)
    r = parsed(line)
    assert r.name == "n\ufffd\ufffdx" and r.work_dir == "/d\ufffd"
    json.loads(Encoder(UTC).encode(r).decode("utf-8"))  # valid UTF-8 JSON


# --- property-based round trip -----------------------------------------------------------------

_FRAGMENTS = [
    " ",
    "=",
    "==",
    " JobState=FAILED",
    " Partition=x",
    " WorkDir=/",
    " Name=",
    " ExitCode=0:0",
    " ReservationName=",
    "(null)",
    "unknown",
    "é",
    "日本",
    "\t",
    "\n",
    " JobState=COMPLETED Partition=x TimeLimit=1 StartTime=Unknown EndTime=Unknown NodeList=n "
    "NodeCnt=1 ProcCnt=1 WorkDir=/f",
    " ReservationName=r Tres=cpu=1 Account=a",
    " QOS=q WcKey=w",
]
_hostile = st.lists(
    st.one_of(
        st.sampled_from(_FRAGMENTS),
        st.text(
            st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r\x00"), max_size=8
        ),
    ),
    max_size=8,
).map("".join)
_word = st.text("abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)
_epoch = st.integers(min_value=946_684_800, max_value=2_000_000_000)
_ZONES = [ZoneInfo("UTC"), ZoneInfo("Asia/Kolkata"), ZoneInfo("America/New_York")]


def _ambiguous(epoch: int, zone: ZoneInfo) -> bool:
    from datetime import datetime

    naive = datetime.fromisoformat(local_time(epoch, zone))
    return (
        naive.replace(tzinfo=zone, fold=0).utcoffset()
        != naive.replace(tzinfo=zone, fold=1).utcoffset()
    )


@st.composite
def jobs(draw: st.DrawFn) -> tuple[FakeJob, str, ZoneInfo]:
    generation = draw(st.sampled_from(GENERATIONS))
    zone = draw(st.sampled_from(_ZONES))
    end = draw(_epoch)
    start = draw(st.one_of(st.just(0), st.integers(end - 10**6, end + 100)))
    eligible = draw(st.one_of(st.just(0), st.integers(max(1, end - 2 * 10**6), end)))
    submit = draw(st.one_of(st.just(0), st.integers(max(1, end - 3 * 10**6), end)))
    job = FakeJob(
        job_id=draw(st.integers(1, 2**32 - 1)),
        user=draw(st.one_of(st.none(), _word)),
        uid=draw(st.integers(0, 2**32 - 1)),
        group=draw(st.one_of(st.none(), _word)),
        gid=draw(st.integers(0, 2**32 - 1)),
        name=draw(st.one_of(st.none(), _hostile)),
        state=draw(st.sampled_from(["COMPLETED", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY"])),
        partition=draw(st.one_of(st.none(), _word)),
        time_limit=draw(st.one_of(st.none(), st.integers(0, 10**6))),
        start=start,
        end=end,
        nodes=draw(st.one_of(st.none(), _word)),
        node_cnt=draw(st.integers(0, 10**5)),
        cpus=draw(st.integers(0, 10**6)),
        work_dir=draw(st.one_of(st.none(), _hostile.map(lambda s: "/" + s))),
        resv=draw(st.sampled_from(["", "maint"])),
        tres=draw(st.sampled_from(["", "cpu=1,mem=1G,node=1,billing=1"])),
        account=draw(st.sampled_from(["", "acct", "acct with space", "a=b c"])),
        qos=draw(st.sampled_from(["", "normal"])),
        wckey=draw(st.sampled_from(["", "wk", "wc key=1"])),
        # slurmctld writes "unknown" for a job without a cluster: it is never a cluster's name.
        cluster=draw(st.one_of(st.none(), _word.filter(lambda w: w != "unknown"))),
        submit=submit,
        eligible=eligible,
        array=draw(st.one_of(st.none(), st.tuples(st.integers(1, 2**31), st.integers(0, 10**6)))),
        het=draw(st.one_of(st.none(), st.tuples(st.integers(1, 2**31), st.integers(0, 100)))),
        derived_ec=draw(st.tuples(st.integers(0, 255), st.integers(0, 64))),
        exit_code=draw(st.tuples(st.integers(0, 255), st.integers(0, 64))),
        select_text=draw(st.sampled_from(["", "Connection=TORUS Reboot=no"])),
    )
    # Legacy lines cannot tell a working directory's trailing Key=value words from select-plugin
    # text; a record is joined over at most MAX_CONTINUATION_LINES extra lines.
    assume((job.name or "").count("\n") + (job.work_dir or "").count("\n") <= MAX_CONTINUATION_LINES)
    if generation == "17.02" and job.work_dir is not None:
        # A 17.02 line ends with its directory: a line break there ends a complete record; so
        # does one after a fake copy of the fields in a name.
        assume("\n" not in job.work_dir)
        assume(not re.search(r" [A-Z][A-Za-z_]*=\S*$", job.work_dir.rstrip(" ")))
        assume(" ReservationName=" not in job.work_dir)
        assume(not job.work_dir.endswith(" ") or not job.select_text)
    if generation == "17.02" and job.name is not None and "\n" in job.name:
        assume(" WorkDir=" not in job.name)
    for epoch in (start, end, eligible, submit):
        if epoch:
            assume(not _ambiguous(epoch, zone))
    return job, generation, zone


def _expected(job: FakeJob, generation: str) -> dict[str, object]:
    """Reference §2, applied to what slurmctld knew (epochs), independently of the encoder."""
    import struct

    def f32(x: float) -> float:
        return struct.unpack("f", struct.pack("f", x))[0]

    start_known = job.start != 0 and job.start <= job.end
    modern = generation != "17.02"
    elapsed = job.end - job.start if start_known and job.start < job.end else 0
    d: dict[str, object] = {
        "jobid": job.job_id,
        "username": job.user,
        "user_id": job.uid,
        "groupname": job.group,
        "group_id": job.gid,
    }
    if start_known:
        d["@start"] = utc_time(job.start)
    d["@end"] = utc_time(job.end)
    d.update(
        elapsed=elapsed,
        partition=job.partition,
        nodes=job.nodes,
        total_cpus=job.cpus,
        total_nodes=job.node_cnt,
    )
    if modern:
        d["derived_ec"] = "%d:%d" % job.derived_ec
        d["exit_code"] = "%d:%d" % job.exit_code
    d["state"] = job.state
    d["cpu_hours"] = f32(f32(float(elapsed * job.cpus)) / 3600.0)
    if modern and job.array:
        d["array_job_id"], d["array_task_id"] = job.array
    het = job.het if (modern and job.het) else (0, 0)
    d.update(pack_job_id=het[0], pack_job_offset=het[1], het_job_id=het[0], het_job_offset=het[1])
    if modern and job.submit:
        d["@submit"] = utc_time(job.submit)
    if modern and job.eligible:
        d["@eligible"] = utc_time(job.eligible)
        if start_known and job.start >= job.eligible:
            d["@queue_wait"] = job.start - job.eligible
    if job.work_dir is not None:
        d["work_dir"] = job.work_dir
    if modern and job.cluster is not None:
        d["cluster"] = job.cluster
    if modern and job.qos:
        d["qos"] = job.qos
    if job.time_limit is not None:
        d["time_limit"] = job.time_limit * 60
    d["job_name"] = "(null)" if job.name is None else job.name
    for key, value in (
        ("reservation_name", job.resv),
        ("wc_key", job.wckey),
        ("tres_req", job.tres),
        ("account", job.account),
    ):
        if modern and value:
            d[key] = value
    return d


@settings(
    max_examples=int(os.environ.get("JOBCOMPD_HYPOTHESIS_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
@given(jobs())
def test_round_trip_every_generation(case: tuple[FakeJob, str, ZoneInfo]) -> None:
    job, generation, zone = case
    lines = render(job, generation, zone).splitlines(keepends=True)
    [(_, count, record)] = parse_records(lines)  # line breaks in a value: the lines are joined
    assert isinstance(record, JobRecord), record
    assert_shortcut_agrees(b"".join(lines))
    assert count == len(lines) and record.jobid == job.job_id
    if record.ambiguous:
        # Fake fields in a name, a directory or an account: the reading chosen is consistent, but
        # it may be the fake one when both are (documented); the record is counted as ambiguous.
        assert any(f in text for text in (job.name or "", job.work_dir or "", job.account, job.wckey)
                   for f in (" JobState=", " ReservationName=", " QOS="))
        return
    assert record.name == ("(null)" if job.name is None else job.name)
    assert record.work_dir == job.work_dir
    produced = json.loads(Encoder(zone).encode(record))
    expected = _expected(job, generation)
    assert list(produced) == list(expected)  # key order
    for key in expected:
        assert produced[key] == expected[key], key
        assert type(produced[key]) is type(expected[key]), key


def assert_shortcut_agrees(line: bytes) -> None:
    """Where the one-reading shortcut answers, the general reader gives the same record."""
    text = line.rstrip(b"\r\n").decode(errors="replace")
    fast = record_module._one_reading(text)
    if fast is not None:
        start = record_module._START.match(text)
        assert start is not None
        assert fast == record_module._read(text, start)


def test_the_one_reading_shortcut_agrees_with_the_general_reader() -> None:
    real = (Path(__file__).parent / "data" / "real-plugin-26.05" / "jobcomp-filetxt.log").read_bytes()
    lines = [*mixed_lines(2000, seed=5), *real.splitlines(keepends=True), *_HOSTILE.values()]
    answered = 0
    for line in lines:
        text = line.rstrip(b"\n").decode(errors="replace")
        answered += record_module._one_reading(text) is not None
        assert_shortcut_agrees(line)
    assert answered > len(lines) // 2  # the shortcut does answer the usual record


# --- bad input -------------------------------------------------------------------------------

_GOOD = render(FakeJob(), "23.02", UTC)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"", "empty"),
        (b"\n", "empty"),
        (b"   \r\n", "empty"),
        (b"hello world\n", "no leading JobId="),
        (_GOOD[:60] + b"\n", "missing"),
        (_GOOD[:-40] + b"\n", "truncated"),
        (_GOOD[:30] + b"\x00" + _GOOD[30:], "NUL"),
        (b"x" * 70_000, "longer than"),
        (_GOOD.replace(b"NodeCnt=2", b"NodeCnt=two"), "malformed"),
        (_GOOD.replace(b"StartTime=2023", b"StartTime=2023-13-45T99:00:00 X="), "malformed"),
        (_GOOD.replace(b"T22:13:20", b"T25:13:20", 1), "invalid StartTime"),
        (_GOOD[:-30] + _GOOD, "second record"),
        (_GOOD.replace(b"ExitCode=0:0 \n", b"ExitCode=0:0\r\nJobId=3\n"), "embedded newline"),
    ],
)
def test_bad_lines_give_reasons(line: bytes, reason: str) -> None:
    result = parse_line(line)
    assert isinstance(result, ParseError), result
    assert reason in result.reason


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_random_bytes_never_raise(data: bytes) -> None:
    result = parse_line(data)
    assert isinstance(result, (JobRecord, ParseError))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, len(_GOOD) - 2))
def test_every_truncation_is_an_error_or_a_shorter_valid_record(cut: int) -> None:
    result = parse_line(_GOOD[:cut] + b"\n")
    if isinstance(result, JobRecord):
        # Cutting inside the last value can still leave a well-formed record; never a wrong job.
        assert result.jobid == 1 and result.state == "COMPLETED"
    else:
        assert result.reason


def test_max_bytes_is_configurable() -> None:
    assert isinstance(parse_line(_GOOD, max_bytes=100), ParseError)
    assert isinstance(parse_line(_GOOD, max_bytes=len(_GOOD)), JobRecord)


# --- what a real slurmctld writes (reference §1, "Seen on a real slurmctld") --------------------

_REAL = (
    b"JobId=%s UserId=root(0) GroupId=root(0) Name=%s JobState=COMPLETED Partition=debug "
    b"TimeLimit=UNLIMITED StartTime=2026-11-28T06:45:38 EndTime=2026-11-28T06:45:39 NodeList=vm "
    b"NodeCnt=1 ProcCnt=1 WorkDir=%s ReservationName= Tres=cpu=1,mem=2000M,node=1,billing=1 "
    b"Account=%s QOS= WcKey=%s Cluster=unknown SubmitTime=2026-11-28T06:45:36 "
    b"EligibleTime=2026-11-28T06:45:36 DerivedExitCode=0:0 ExitCode=0:0 \n"
)


def real(name: bytes = b"job", work_dir: bytes = b"/srv/w", account: bytes = b"", wckey: bytes = b"",
         jobid: bytes = b"100") -> bytes:
    return _REAL % (jobid, name, work_dir, account, wckey)


def test_tail_values_with_spaces_and_equals() -> None:
    r = parsed(real(account=b"acct with space"))
    assert (r.account, r.qos, r.wckey, r.ambiguous) == ("acct with space", None, None, False)
    r = parsed(real(account=b"acct1", wckey=b"wc key=1"))
    assert (r.account, r.wckey, r.cluster) == ("acct1", "wc key=1", None)
    r = parsed(real(account=b"a Account=b QOS=", wckey=b"w WcKey=x Cluster=y"))
    assert (r.account, r.wckey) == ("a Account=b QOS=", "w WcKey=x Cluster=y")


def test_fake_tail_in_a_working_directory() -> None:
    work_dir = b"/srv/weird ReservationName=evil Tres=cpu=1 Account=x"
    r = parsed(real(work_dir=work_dir))
    assert (r.work_dir, r.reservation, r.account) == (work_dir.decode(), None, None)
    assert r.tres == "cpu=1,mem=2000M,node=1,billing=1" and r.ambiguous


_FORGED = (
    b"evil JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED StartTime=2020-01-01T00:00:00 "
    b"EndTime=2020-01-01T00:00:01 NodeList=vm NodeCnt=1 ProcCnt=1 WorkDir=/fake"
)


def test_a_forged_copy_of_the_fields_in_a_name_does_not_win() -> None:
    r = parsed(real(name=_FORGED))
    assert r.name == _FORGED.decode() and r.work_dir == "/srv/w"
    assert (r.start, r.end) == ("2026-11-28T06:45:38", "2026-11-28T06:45:39")
    assert r.ambiguous


def test_a_forged_copy_in_a_working_directory_does_not_win() -> None:
    work_dir = b"/srv/a " + _FORGED.split(b" ", 1)[1]
    r = parsed(real(work_dir=work_dir))
    assert r.name == "job" and r.work_dir == work_dir.decode()
    assert r.start == "2026-11-28T06:45:38" and r.ambiguous


def test_consistent_fake_copies_take_the_longest_name() -> None:
    # Both readings are consistent (times unknown): the documented rule takes the longest name.
    fake = (b"ff JobState=FAILED Partition=p TimeLimit=5 StartTime=Unknown EndTime=Unknown "
            b"NodeList=n1 NodeCnt=1 ProcCnt=1 WorkDir=/fake")
    r = parsed(real(name=fake))
    assert r.name == fake.decode() and r.state == "COMPLETED" and r.ambiguous


def test_a_job_named_null_is_sent_as_its_name() -> None:
    r = parsed(real(name=b"(null)"))
    assert r.name == "(null)"
    assert json.loads(Encoder(UTC).encode(r))["job_name"] == "(null)"


def test_a_record_split_by_line_breaks_in_its_name_is_joined() -> None:
    line = real(name=b"line1\nline2\n\nline4 JobId=77 x")
    lines = line.splitlines(keepends=True)
    assert len(lines) == 4
    before, after = real(jobid=b"99"), real(jobid=b"101")
    groups = parse_records([before, *lines, after])
    assert [(i, n) for i, n, _ in groups] == [(0, 1), (1, 4), (5, 1)]
    joined = groups[1][2]
    assert isinstance(joined, JobRecord) and joined.name == "line1\nline2\n\nline4 JobId=77 x"
    assert json.loads(Encoder(UTC).encode(joined))["job_name"] == "line1\nline2\n\nline4 JobId=77 x"


@pytest.mark.parametrize(
    "name",
    [
        b"evil\nJobId=77 UserId=root(0) GroupId=root(0) Name=y",
        b"a\nJobId=1 UserId=r(0) GroupId=r(0) Name=\nJobId=77 UserId=root(0) GroupId=root(0) Name=y",
    ],
    ids=["one fake start", "two fake starts"],
)
def test_a_fake_record_start_after_a_line_break_in_a_name_forges_nothing(name: bytes) -> None:
    # Read alone, the last line would be a record of job 77 (user root) with job 100's fields.
    lines = real(name=name).splitlines(keepends=True)
    before, after = real(jobid=b"99"), real(jobid=b"101")
    groups = parse_records([before, *lines, after])
    assert [(i, n) for i, n, _ in groups] == [(0, 1), (1, len(lines)), (1 + len(lines), 1)]
    record = groups[1][2]
    assert isinstance(record, JobRecord)
    assert (record.jobid, record.name, record.ambiguous) == (100, name.decode(), True)
    assert [r.jobid for _, _, r in groups if isinstance(r, JobRecord)] == [99, 100, 101]
    # A read or a batch that ends in its middle holds back all of it, not just the last start.
    for k in range(1, len(lines)):
        assert unfinished_tail([before, *lines[:k]]) == k
    assert unfinished_tail([before, *lines]) == 0


def test_lines_are_not_glued_into_a_record_they_do_not_make() -> None:
    # A cut-short record, then whole records: each stands alone.
    cut = real(jobid=b"5")[:80] + b"\n"
    groups = parse_records([cut, b"garbage\n", real(jobid=b"6")])
    assert [(i, n) for i, n, _ in groups] == [(0, 1), (1, 1), (2, 1)]
    assert isinstance(groups[0][2], ParseError) and isinstance(groups[2][2], JobRecord)
    # Continuations are bounded: a record start followed by many stray lines is not joined.
    stray = [real(name=b"a" + b"\nb" * (MAX_CONTINUATION_LINES + 1))]
    lines = stray[0].splitlines(keepends=True)
    assert all(n == 1 for _, n, _ in parse_records(lines))


def test_unfinished_tail_holds_back_the_start_of_a_split_record() -> None:
    lines = real(name=b"line1\nline2").splitlines(keepends=True)
    assert unfinished_tail([real(), lines[0]]) == 1
    assert unfinished_tail([real(), *lines]) == 0
    assert unfinished_tail([real()]) == 0
    assert unfinished_tail([b"garbage\n"]) == 0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        (b"JobId=100", b"JobId=18446744073709551616"),
        (b"JobId=100", b"JobId=9223372036854775808"),
        (b"JobId=100", b"JobId=4294967296"),
        (b"ProcCnt=1", b"ProcCnt=99999999999999999999999"),
        (b"NodeCnt=1", b"NodeCnt=99999999999999999999999"),
        (b"UserId=root(0)", b"UserId=root(99999999999999999999999)"),
        (b"TimeLimit=UNLIMITED", b"TimeLimit=99999999999999999999999"),
        (b"JobId=100", b"JobId=" + b"9" * 5000),
    ],
)
def test_numbers_beyond_32_bits_are_quarantined_with_a_reason(field: bytes, value: bytes) -> None:
    result = parse_line(real().replace(field, value, 1))
    assert isinstance(result, ParseError) and "out of range" in result.reason


def test_the_line_cap_does_not_count_the_line_ending() -> None:
    line = real(name=b"x" * 1000)
    size = len(line) - 1
    assert isinstance(parse_line(line, max_bytes=size), JobRecord)
    assert isinstance(parse_line(line[:-1] + b"\r\n", max_bytes=size), JobRecord)
    assert isinstance(parse_line(line, max_bytes=size - 1), ParseError)


_HOSTILE = hostile_lines(DEFAULT_MAX_LINE_BYTES - 600)


@pytest.mark.parametrize("shape", list(_HOSTILE))
def test_hostile_lines_of_64_kib_parse_in_linear_time(shape: str) -> None:
    line = _HOSTILE[shape]
    assert len(line) <= DEFAULT_MAX_LINE_BYTES
    # Quadratic parsing of such lines took up to 30 s; linear takes milliseconds. The bound is
    # loose (a hang detector, not a benchmark: `make bench-parse` measures the ratio).
    began = time.process_time()
    result = parse_line(line)
    assert time.process_time() - began < 1.0
    assert isinstance(result, (JobRecord, ParseError))
