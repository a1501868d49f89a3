"""A real slurmctld writes the log; what arrives in Kafka is compared with Slurm's own view.

Debian's Slurm 22.05 runs as root on loopback (tests/slurm_cluster.py), with jobs whose names,
working directories, accounts and wckeys are as hostile as users make them. The daemon tails the
real ``jobcomp/filetxt`` log; every job must arrive once, with the values ``squeue --json`` gives
for it, and no line may be quarantined. Skipped where slurmctld is not installed or not root
(``.ci/run`` installs it and runs as root).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.brokers.mockcluster import MockCluster
from tests.brokers.readback import consume_all
from tests.jobcompd_env import DaemonProcess, JobcompdEnv, wait_for
from tests.slurm_cluster import NODE, SlurmCluster, unavailable

pytestmark = pytest.mark.skipif(unavailable() is not None, reason=str(unavailable()))

ZONE = "Europe/Berlin"  # slurmctld writes local times; jobcompd must turn them into UTC
FORGED = (
    "evil JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED StartTime=2020-01-01T00:00:00 "
    "EndTime=2020-01-01T00:00:01 NodeList=vm NodeCnt=1 ProcCnt=1 WorkDir=/fake"
)
NAMES: list[str | bytes] = [
    "plain",
    "two  spaces  name",
    "a=b c=d =",
    "x JobState=FAILED Partition=x",
    FORGED,
    "naïve ☃ 日本語 🚀",
    "line1\nline2 JobId=77 x",
    "evil\nJobId=77 UserId=root(0) GroupId=root(0) Name=y",
    "two\nline\nbreaks",
    "tab\there",
    b"bad\xff\xfebytes",
    "(null)",
    "12345",
    "  lead and trail  ",
]
WORK_DIRS = [
    "dir with spaces/k=v x=y",
    "weird ReservationName=evil Tres=cpu=1 Account=x",
    "wd JobState=COMPLETED Partition=debug TimeLimit=UNLIMITED StartTime=2020-01-01T00:00:00 "
    "EndTime=2020-01-01T00:00:01 NodeList=vm NodeCnt=1 ProcCnt=1 WorkDir=y",
    "ünï cödé ☃",
]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlurmCluster]:
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"), zone=ZONE).start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def kafka(mock_cluster: MockCluster) -> MockCluster:
    mock_cluster.create_topic("jctest", partitions=4)
    return mock_cluster


def tail_real_log(kafka: MockCluster, slurm: SlurmCluster, root: Path) -> JobcompdEnv:
    env = JobcompdEnv(root, kafka.bootstrap, topic="jctest", params="poll_interval=1",
                      log_path=slurm.jobcomp_log)
    env.config.write_text(env.config.read_text().replace('timezone = "UTC"', f'timezone = "{ZONE}"'))
    return env


def submit_workload(slurm: SlurmCluster) -> set[int]:
    """Hostile names, directories, accounts and wckeys; arrays, a het job, failures, cancels."""
    work = slurm.work
    ids = set()
    for name in NAMES:
        ids.add(slurm.sbatch("-J", name, "-D", str(work), "--wrap", "sleep 1"))
    for sub in WORK_DIRS:
        (work / sub).mkdir(parents=True, exist_ok=True)
        ids.add(slurm.sbatch("-J", "wd", "-D", str(work / sub), "--wrap", "true"))
    ids.add(slurm.sbatch("-J", "acct", "-D", str(work), "-A", "acct with space", "--wrap", "true"))
    ids.add(slurm.sbatch("-J", "wck", "-D", str(work), "-A", "acct1", "--wckey", "wc key=1",
                         "--wrap", "true"))
    ids.add(slurm.sbatch("-J", "arr", "-D", str(work), "--array=0-2", "--wrap", "true"))
    ids.add(slurm.sbatch("-J", "exit1", "-D", str(work), "--wrap", "exit 1"))
    ids.add(slurm.sbatch("-J", "killed9", "-D", str(work), "--wrap", "kill -9 $$"))
    ids.add(slurm.sbatch("-J", "tl5", "-D", str(work), "-t", "5", "-p", "short", "--wrap", "true"))
    ids.add(slurm.sbatch("-J", "twoparts", "-D", str(work), "-p", "debug,short", "--wrap", "true"))
    ids.add(slurm.sbatch("-J", "twocpu", "-D", str(work), "-c", "2", "--wrap", "sleep 1"))
    het = "#!/bin/sh\n#SBATCH --job-name=hetjob --ntasks=1\n#SBATCH hetjob\n#SBATCH --ntasks=1\ntrue\n"
    ids.add(int(slurm.run("sbatch", "--parsable", "-D", str(work), input=het.encode()).stdout
                .strip().split("+")[0].split(";")[0]))
    held = slurm.sbatch("-J", "held", "-D", str(work), "--hold", "--wrap", "true")
    running = slurm.sbatch("-J", "runcancel", "-D", str(work), "--wrap", "sleep 60")
    wait_for(lambda: slurm.jobs()[running]["job_state"] == "RUNNING", 60, "a running job")
    slurm.run("scancel", str(held))
    slurm.run("scancel", str(running))
    ids |= {held, running}
    slurm.wait_finished(ids)
    # A reservation on the node, for one job (the others would wait for it).
    slurm.run("scontrol", "create", "reservation", "ReservationName=resv_jc", "Users=root",
              f"Nodes={NODE}", "StartTime=now", "Duration=10", "Flags=IGNORE_JOBS")
    in_resv = slurm.sbatch("-J", "in_resv", "-D", str(work), "--reservation=resv_jc", "--wrap", "true")
    ids.add(in_resv)
    slurm.wait_finished({in_resv})
    slurm.run("scontrol", "delete", "ReservationName=resv_jc")
    return ids


def utc(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S")


def exit_pair(status: int) -> str:
    if status & 0x7F:
        return f"0:{status & 0x7F}"
    return f"{(status >> 8) & 0xFF}:0"


def slurm_view(job: dict[str, Any]) -> dict[str, Any]:
    """What the plugin's message must hold for ``job``, from Slurm's own record of it."""
    ran = bool(job["nodes"])
    expected: dict[str, Any] = {
        "jobid": job["job_id"],
        "username": job["user_name"],
        "user_id": job["user_id"],
        "groupname": job["group_name"],
        "group_id": job["group_id"],
        "@start": utc(job["start_time"]),
        "@end": utc(job["end_time"]),
        "elapsed": max(0, job["end_time"] - job["start_time"]),
        "partition": job["partition"],
        "nodes": job["nodes"] or None,
        "total_nodes": job["node_count"] if ran else 0,
        "state": job["job_state"],
        "exit_code": exit_pair(job["exit_code"]),
        "derived_ec": exit_pair(job["derived_exit_code"]),
        "@submit": utc(job["submit_time"]),
        "work_dir": job["current_working_directory"],
        "job_name": job["name"],
    }
    if ran:
        expected["total_cpus"] = job["cpus"]
    if job["eligible_time"]:
        expected["@eligible"] = utc(job["eligible_time"])
    if job.get("array_task_id") is not None:
        expected["array_job_id"] = job["array_job_id"]
        expected["array_task_id"] = job["array_task_id"]
    expected["het_job_id"] = job.get("het_job_id") or 0
    expected["het_job_offset"] = job.get("het_job_offset") or 0
    if job.get("time_limit") is not None:
        expected["time_limit"] = job["time_limit"] * 60
    for key, theirs in (("account", "account"), ("wc_key", "wckey"),
                        ("reservation_name", "resv_name"), ("tres_req", "tres_req_str")):
        if job.get(theirs):
            expected[key] = job[theirs]
    # What slurmctld knew when it wrote the record, which squeue no longer shows:
    if job["name"] == "in_resv":  # the reservation is deleted once its job is done
        expected["reservation_name"] = "resv_jc"
    if job["name"] == "twoparts":  # the requested list, not the partition the job ran in
        expected["partition"] = "debug,short"
    if job["job_state"] == "CANCELLED":  # the batch step's signal is reported after the record
        del expected["exit_code"], expected["derived_ec"]
    return expected


def compare(messages: dict[int, dict[str, Any]], jobs: dict[int, dict[str, Any]]) -> list[str]:
    wrong = []
    for jobid, job in jobs.items():
        message = messages.get(jobid)
        if message is None:
            wrong.append(f"job {jobid} ({job['name']!r}) did not arrive")
            continue
        for key, value in slurm_view(job).items():
            if message.get(key) != value:
                wrong.append(f"job {jobid} {key}: sent {message.get(key)!r}, slurm says {value!r}")
        for absent in ("account", "wc_key", "reservation_name", "cluster", "qos"):
            if absent in message and absent not in slurm_view(job) and absent != "cluster":
                wrong.append(f"job {jobid}: {absent} sent ({message[absent]!r}), slurm has none")
    return wrong


def arrived(kafka: MockCluster, count: int) -> dict[int, dict[str, Any]]:
    got = consume_all(kafka.bootstrap, "jctest", expected=count, timeout=60)
    messages: dict[int, dict[str, Any]] = {}
    for m in got:
        doc = json.loads(m.value())
        assert doc["jobid"] not in messages, f"job {doc['jobid']} arrived twice"
        messages[doc["jobid"]] = doc
    return messages


def test_every_real_record_arrives_with_slurms_own_values(
    kafka: MockCluster, slurm: SlurmCluster, tmp_path: Path
) -> None:
    env = tail_real_log(kafka, slurm, tmp_path)
    with DaemonProcess(env) as daemon:
        daemon.start()
        ids = submit_workload(slurm)
        jobs = {i: j for i, j in slurm.jobs().items()}
        assert len(jobs) >= len(ids) + 3  # array tasks and het components have ids of their own
        wait_for(lambda: env.delivered() >= len(jobs), 60, f"{len(jobs)} deliveries")
        assert env.count("quarantine") == 0, env.run("status").stdout
        messages = arrived(kafka, len(jobs))
        assert not compare(messages, jobs), "\n".join(compare(messages, jobs))
        assert sorted(messages) == sorted(jobs)
        # The forged name did not forge the accounting times.
        forged = next(m for m in messages.values() if m.get("job_name") == FORGED)
        assert forged["@start"] > "2026"
        assert daemon.stop() == 0


def test_logrotate_as_the_snippet_does_it_loses_and_repeats_nothing(
    kafka: MockCluster, slurm: SlurmCluster, tmp_path: Path
) -> None:
    """The shipped logrotate snippet (create mode, SIGUSR2), run by the real logrotate."""
    if subprocess.run(["which", "logrotate"], capture_output=True).returncode != 0:
        pytest.skip("logrotate is not installed (.ci/run installs it)")
    env = tail_real_log(kafka, slurm, tmp_path)
    snippet = (Path(__file__).parent.parent / "etc" / "logrotate.d" / "slurm-jobcomp").read_text()
    conf = tmp_path / "logrotate.conf"
    conf.write_text(
        snippet.replace("/var/log/slurm_jobcomp.log", str(slurm.jobcomp_log))
        .replace("create 0644 slurm slurm", "create 0644 root root")
    )
    state = tmp_path / "logrotate.state"
    with DaemonProcess(env) as daemon:
        daemon.start()
        before = {slurm.sbatch("-J", f"before{i}", "-D", str(slurm.work), "--wrap", "true")
                  for i in range(3)}
        slurm.wait_finished(before)
        rotated = subprocess.run(["logrotate", "-f", "-s", str(state), str(conf)],
                                 capture_output=True, text=True)
        assert rotated.returncode == 0, rotated.stderr
        old = slurm.jobcomp_log.with_name(slurm.jobcomp_log.name + ".1")
        assert old.exists() and slurm.jobcomp_log.exists()
        after = {slurm.sbatch("-J", f"after{i}", "-D", str(slurm.work), "--wrap", "true")
                 for i in range(3)}
        slurm.wait_finished(after)
        # SIGUSR2 made slurmctld reopen JobCompLoc: the jobs after the rotation are in the new file.
        fresh = slurm.jobcomp_log.read_bytes()
        assert all(b"JobId=%d " % i in fresh for i in after), slurm.log_tail()
        assert not any(b"JobId=%d " % i in fresh for i in before)
        jobs = slurm.jobs()
        wait_for(lambda: env.delivered() >= len(jobs), 60, f"{len(jobs)} deliveries")
        time.sleep(1)
        messages = arrived(kafka, len(jobs))  # each once: arrived() fails on a duplicate
        assert sorted(messages) == sorted(jobs)
        assert env.count("quarantine") == 0
        assert daemon.stop() == 0
