"""Encoder: golden JSON per Slurm generation (written by hand from reference §2), DST, record ids."""

from __future__ import annotations

import json
import re
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from jobcompd.encode import Encoder, record_id
from jobcompd.joining import parse_records
from jobcompd.record import JobRecord, parse_line

BERLIN = ZoneInfo("Europe/Berlin")  # CET (+1) in winter, CEST (+2) in summer

# (generation, line, expected JSON text) — the expected JSON is typed out by hand, in json-c's
# bytes: "/" written "\/", cpu_hours with %.17g (and ".0" when that reads as an integer).
GOLDEN = [
    (
        "23.02",
        b"JobId=4242 UserId=alice(1001) GroupId=users(100) Name=train model JobState=COMPLETED "
        b"Partition=gpu TimeLimit=120 StartTime=2024-06-01T12:00:00 EndTime=2024-06-01T13:30:00 "
        b"NodeList=gpu[01-02] NodeCnt=2 ProcCnt=16 WorkDir=/home/alice/runs/a b=c ReservationName= "
        b"Tres=cpu=16,mem=64G,node=2,billing=16,gres/gpu=4 Account=ml QOS=normal WcKey= "
        b"Cluster=hpc1 SubmitTime=2024-06-01T11:50:00 EligibleTime=2024-06-01T11:55:00 "
        b"DerivedExitCode=0:0 ExitCode=0:0 \n",
        '{"jobid":4242,"username":"alice","user_id":1001,"groupname":"users","group_id":100,'
        '"@start":"2024-06-01T10:00:00","@end":"2024-06-01T11:30:00","elapsed":5400,'
        '"partition":"gpu","nodes":"gpu[01-02]","total_cpus":16,"total_nodes":2,'
        '"derived_ec":"0:0","exit_code":"0:0","state":"COMPLETED","cpu_hours":24.0,'
        '"pack_job_id":0,"pack_job_offset":0,"het_job_id":0,"het_job_offset":0,'
        '"@submit":"2024-06-01T09:50:00","@eligible":"2024-06-01T09:55:00","@queue_wait":300,'
        '"work_dir":"\\/home\\/alice\\/runs\\/a b=c","cluster":"hpc1","qos":"normal","time_limit":7200,'
        '"job_name":"train model","tres_req":"cpu=16,mem=64G,node=2,billing=16,gres\\/gpu=4",'
        '"account":"ml"}',
    ),
    (
        "20.11",
        b"JobId=5001 UserId=bob(2002) GroupId=hpc(200) Name=sweep JobState=FAILED Partition=batch "
        b"TimeLimit=UNLIMITED StartTime=2023-01-15T08:00:00 EndTime=2023-01-15T08:00:20 "
        b"NodeList=node07 NodeCnt=1 ProcCnt=3 WorkDir=/scratch/bob ReservationName=maint "
        b"Tres=cpu=3,mem=3G,node=1,billing=3 Account=chem QOS=high WcKey=wk1 Cluster=hpc1 "
        b"SubmitTime=2023-01-15T07:00:00 EligibleTime=2023-01-15T07:00:00 ArrayJobId=5000 "
        b"ArrayTaskId=1 HetJobId=5001 HetJobOffset=0 DerivedExitCode=1:0 ExitCode=0:9 \n",
        '{"jobid":5001,"username":"bob","user_id":2002,"groupname":"hpc","group_id":200,'
        '"@start":"2023-01-15T07:00:00","@end":"2023-01-15T07:00:20","elapsed":20,'
        '"partition":"batch","nodes":"node07","total_cpus":3,"total_nodes":1,"derived_ec":"1:0",'
        '"exit_code":"0:9","state":"FAILED","cpu_hours":0.01666666753590107,"array_job_id":5000,'
        '"array_task_id":1,"pack_job_id":5001,"pack_job_offset":0,"het_job_id":5001,'
        '"het_job_offset":0,"@submit":"2023-01-15T06:00:00","@eligible":"2023-01-15T06:00:00",'
        '"@queue_wait":3600,"work_dir":"\\/scratch\\/bob","cluster":"hpc1","qos":"high",'
        '"job_name":"sweep","reservation_name":"maint","wc_key":"wk1",'
        '"tres_req":"cpu=3,mem=3G,node=1,billing=3","account":"chem"}',
    ),
    (
        "20.02",  # Gres=, HetJob*, a non-UTF-8 job name, times inside the autumn DST fold
        b"JobId=900 UserId=erin(5005) GroupId=users(100) Name=caf\xe9 \xff JobState=OUT_OF_MEMORY "
        b"Partition=batch TimeLimit=60 StartTime=2020-10-25T02:30:00 EndTime=2020-10-25T02:40:00 "
        b"NodeList=node01 NodeCnt=1 ProcCnt=1 WorkDir=unknown ReservationName= Gres=gpu:1 "
        b"Account=a QOS=normal WcKey= Cluster=c2 SubmitTime=2020-10-25T02:00:00 "
        b"EligibleTime=2020-10-25T02:00:00 HetJobId=900 HetJobOffset=2 DerivedExitCode=0:0 "
        b"ExitCode=0:125 \n",
        '{"jobid":900,"username":"erin","user_id":5005,"groupname":"users","group_id":100,'
        '"@start":"2020-10-25T00:30:00","@end":"2020-10-25T00:40:00","elapsed":600,'
        '"partition":"batch","nodes":"node01","total_cpus":1,"total_nodes":1,"derived_ec":"0:0",'
        '"exit_code":"0:125","state":"OUT_OF_MEMORY","cpu_hours":0.1666666716337204,'
        '"pack_job_id":900,"pack_job_offset":2,"het_job_id":900,"het_job_offset":2,'
        '"@submit":"2020-10-25T00:00:00","@eligible":"2020-10-25T00:00:00","@queue_wait":1800,'
        '"cluster":"c2","qos":"normal","time_limit":3600,"job_name":"caf\ufffd \ufffd",'
        '"tres_req":"gpu:1","account":"a"}',
    ),
    (
        "17.11",  # Gres=, PackJob*, (null) group, unknown cluster and submit, select text
        b"JobId=77 UserId=carol(3003) GroupId=(null)(3003) Name=Name=fake JobState=TIMEOUT "
        b"Partition=debug TimeLimit=10 StartTime=2018-03-01T10:00:00 EndTime=2018-03-01T10:10:00 "
        b"NodeList=n[1-4] NodeCnt=4 ProcCnt=4 WorkDir=/home/carol ReservationName= Gres= Account= "
        b"QOS=normal WcKey= Cluster=unknown SubmitTime=unknown EligibleTime=2018-03-01T09:59:00 "
        b"PackJobId=77 PackJobOffset=1 DerivedExitCode=0:15 ExitCode=0:1 resv_id=12 \n",
        '{"jobid":77,"username":"carol","user_id":3003,"groupname":null,"group_id":3003,'
        '"@start":"2018-03-01T09:00:00","@end":"2018-03-01T09:10:00","elapsed":600,'
        '"partition":"debug","nodes":"n[1-4]","total_cpus":4,"total_nodes":4,"derived_ec":"0:15",'
        '"exit_code":"0:1","state":"TIMEOUT","cpu_hours":0.66666668653488159,"pack_job_id":77,'
        '"pack_job_offset":1,"het_job_id":77,"het_job_offset":1,"@eligible":"2018-03-01T08:59:00",'
        '"@queue_wait":60,"work_dir":"\\/home\\/carol","qos":"normal","time_limit":600,'
        '"job_name":"Name=fake"}',
    ),
    (
        "17.02",  # no tail, Procs=, cancelled while pending, (null) partition/nodes, select text
        b"JobId=12 UserId=dave(4004) GroupId=dave(4004) Name=12345 JobState=CANCELLED "
        b"Partition=(null) TimeLimit=30 StartTime=Unknown EndTime=2016-07-04T00:00:05 "
        b"NodeList=(null) NodeCnt=0 Procs=2 WorkDir=/home/dave/my project Connection=TORUS "
        b"Reboot=no\n",
        '{"jobid":12,"username":"dave","user_id":4004,"groupname":"dave","group_id":4004,'
        '"@end":"2016-07-03T22:00:05","elapsed":0,"partition":null,"nodes":null,"total_cpus":2,'
        '"total_nodes":0,"state":"CANCELLED","cpu_hours":0.0,"pack_job_id":0,"pack_job_offset":0,'
        '"het_job_id":0,"het_job_offset":0,"work_dir":"\\/home\\/dave\\/my project","time_limit":1800,'
        '"job_name":"12345"}',
    ),
]


@pytest.mark.parametrize(("generation", "line", "expected"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_golden_json_per_generation(generation: str, line: bytes, expected: str) -> None:
    record = parse_line(line)
    assert isinstance(record, JobRecord), record
    produced = Encoder(BERLIN).encode(record)
    assert produced.decode() == expected
    # Same keys in the same order, and valid UTF-8 JSON.
    assert list(json.loads(produced)) == list(json.loads(expected))


def test_end_in_fold_before_start_takes_second_occurrence() -> None:
    line = (
        b"JobId=1 UserId=a(1) GroupId=a(1) Name=x JobState=COMPLETED Partition=p TimeLimit=60 "
        b"StartTime=2020-10-25T02:50:00 EndTime=2020-10-25T02:10:00 NodeList=n1 NodeCnt=1 "
        b"ProcCnt=1 WorkDir=/w ReservationName= Tres= Account= QOS=normal WcKey= Cluster=c "
        b"SubmitTime=unknown EligibleTime=unknown DerivedExitCode=0:0 ExitCode=0:0 \n"
    )
    record = parse_line(line)
    assert isinstance(record, JobRecord)
    d = Encoder(BERLIN).to_dict(record)
    assert d["@start"] == "2020-10-25T00:50:00"  # first 02:50 (CEST)
    assert d["@end"] == "2020-10-25T01:10:00"  # second 02:10 (CET)
    assert d["elapsed"] == 1200


def test_time_in_spring_gap_uses_offset_before_transition() -> None:
    line = (
        b"JobId=2 UserId=a(1) GroupId=a(1) Name=x JobState=COMPLETED Partition=p TimeLimit=60 "
        b"StartTime=2021-03-28T02:30:00 EndTime=2021-03-28T03:30:00 NodeList=n1 NodeCnt=1 "
        b"ProcCnt=2 WorkDir=/w \n"
    )
    record = parse_line(line)
    assert isinstance(record, JobRecord)
    d = Encoder(BERLIN).to_dict(record)
    assert d["@start"] == "2021-03-28T01:30:00"  # 02:30 read with CET (+1), the offset before
    assert d["@end"] == "2021-03-28T01:30:00"  # 03:30 CEST (+2)
    assert d["elapsed"] == 0  # start == end: not start < end


def test_half_hour_zone_and_cache_agree_with_zoneinfo() -> None:
    enc = Encoder(ZoneInfo("Asia/Kolkata"))  # +05:30
    line = (
        b"JobId=3 UserId=a(1) GroupId=a(1) Name=x JobState=COMPLETED Partition=p TimeLimit=60 "
        b"StartTime=2024-01-01T05:29:59 EndTime=2024-01-01T05:31:00 NodeList=n1 NodeCnt=1 "
        b"ProcCnt=1 WorkDir=/w \n"
    )
    record = parse_line(line)
    assert isinstance(record, JobRecord)
    d = enc.to_dict(record)
    assert d["@start"] == "2023-12-31T23:59:59"
    assert d["@end"] == "2024-01-01T00:01:00"
    assert d["elapsed"] == 61


def test_queue_wait_omitted_when_negative_and_cpu_hours_is_float() -> None:
    line = (
        b"JobId=4 UserId=a(1) GroupId=a(1) Name=x JobState=COMPLETED Partition=p TimeLimit=60 "
        b"StartTime=2024-01-01T00:00:00 EndTime=2024-01-01T01:00:00 NodeList=n1 NodeCnt=1 "
        b"ProcCnt=3 WorkDir=/w ReservationName= Tres= Account= QOS= WcKey= Cluster=c "
        b"SubmitTime=2024-01-01T00:00:00 EligibleTime=2024-01-01T00:00:10 "
        b"DerivedExitCode=0:0 ExitCode=0:0 \n"
    )
    record = parse_line(line)
    assert isinstance(record, JobRecord)
    d = json.loads(Encoder(ZoneInfo("UTC")).encode(record))
    assert "@queue_wait" not in d and d["@eligible"] == "2024-01-01T00:00:10"
    assert d["cpu_hours"] == 3.0 and isinstance(d["cpu_hours"], float)
    assert "qos" not in d and "account" not in d and "tres_req" not in d


def test_record_id_is_deterministic_and_distinguishes_jobs_and_clusters() -> None:
    a = b"JobId=1 UserId=a(1) GroupId=a(1) Name=x JobState=COMPLETED ... \n"
    assert record_id(a, "c1") == record_id(a, "c1")
    assert record_id(a, "c1") == record_id(a.rstrip(b"\n") + b"\r\n", "c1")
    assert record_id(a, "c1") != record_id(a, "c2")
    assert record_id(a, None) != record_id(a.replace(b"JobId=1", b"JobId=2"), None)
    assert len(record_id(a, None)) == 32


def test_record_id_never_changes_between_versions() -> None:
    # States written by earlier versions know their records by these ids: a changed id would send
    # every record of a log read again a second time.
    line = b"JobId=42 UserId=alice(1000) GroupId=users(100) Name=x JobState=COMPLETED\n"
    assert record_id(line, "c1") == "c91c2f60260d6edf66644d18786ece8c"
    assert record_id(line, None) == "055d4cfee279cc6a97c2ca40c3a85833"


def test_record_id_uses_the_line_cluster_before_the_fallback() -> None:
    line = GOLDEN[0][1]  # Cluster=hpc1
    record = parse_line(line)
    assert isinstance(record, JobRecord)
    assert Encoder(BERLIN, "other").record_id(line, record) == record_id(line, "hpc1")
    legacy = GOLDEN[4][1]  # 17.02: no Cluster=
    rec = parse_line(legacy)
    assert isinstance(rec, JobRecord)
    assert Encoder(BERLIN, "fallback").record_id(legacy, rec) == record_id(legacy, "fallback")


# --- the real plugin's bytes -------------------------------------------------------------------

REAL = Path(__file__).parent / "data" / "real-plugin-26.05"
# Times differ between the two runs of the workload (and what is computed from them); job 136's
# time limit was set by the backfill scheduler in one run only.
_RUN_DEPENDENT = {"@start", "@end", "@submit", "@eligible", "elapsed", "@queue_wait", "cpu_hours"}


def _json_values(message: bytes) -> dict[str, bytes]:
    """Each top-level key of a flat JSON object and the exact bytes of its value."""
    values = {}
    for m in re.finditer(rb'"([^"]+)":("(?:[^"\\]|\\.)*"|[^,}]*)', message):
        values.setdefault(m.group(1).decode(), m.group(2))
    return values


def test_every_real_record_matches_the_real_plugin_by_value_and_byte() -> None:
    plugin = {}
    for raw in (REAL / "plugin-messages.jsonl").read_bytes().splitlines():
        plugin[json.loads(raw.decode("utf-8", "surrogateescape"))["jobid"]] = raw
    lines = (REAL / "jobcomp-filetxt.log").read_bytes().splitlines(keepends=True)
    encoder = Encoder(ZoneInfo("UTC"))
    produced = {}
    for index, count, record in parse_records(lines):
        assert isinstance(record, JobRecord), (index, record)
        produced[record.jobid] = (encoder.encode(record), count)
    assert sorted(produced) == sorted(plugin)  # every job, the one split over two lines included
    assert produced[142][1] == 2
    for jobid, (ours, _) in produced.items():
        theirs = _json_values(plugin[jobid])
        for key, value in _json_values(ours).items():
            if key in _RUN_DEPENDENT or (jobid, key) == (136, "time_limit"):
                continue
            if jobid == 112 and key == "job_name":
                # The one deliberate difference: invalid UTF-8 is sent as U+FFFD, not raw.
                assert value == '"bad\ufffd\ufffdbytes"'.encode() and theirs[key] == b'"bad\xff\xfebytes"'
                continue
            assert value == theirs[key], (jobid, key)
        # Every key the plugin sends that a filetxt line carries is sent.
        carried = set(_json_values(ours))
        for key in ("job_name", "work_dir", "account", "wc_key", "reservation_name", "tres_req", "qos"):
            assert (key in theirs) == (key in carried), (jobid, key)


def test_json_c_bytes_for_slashes_and_doubles() -> None:
    line = GOLDEN[0][1].replace(b"EndTime=2024-06-01T13:30:00", b"EndTime=2024-06-01T12:00:02")
    line = line.replace(b"ProcCnt=16", b"ProcCnt=1").replace(b"NodeCnt=2", b"NodeCnt=1")
    record = parse_line(line)
    assert isinstance(record, JobRecord)
    produced = Encoder(BERLIN).encode(record)
    assert b'"cpu_hours":0.00055555556900799274,' in produced  # %.17g, as json-c prints it
    assert b'"work_dir":"\\/home\\/alice\\/runs\\/a b=c"' in produced
    zero = Encoder(BERLIN).encode(record._replace(end=record.start))
    assert b'"cpu_hours":0.0,' in zero
    assert json.loads(produced)["work_dir"] == "/home/alice/runs/a b=c"
