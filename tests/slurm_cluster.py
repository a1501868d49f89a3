"""A real Slurm — Debian's slurmctld, slurmd and munged (Slurm 22.05) — as root on loopback.

Everything lives in one temporary directory: its own munge key and socket, free ports, its own
state, spool and logs, ``JobCompType=jobcomp/filetxt`` writing ``jobcomp.log``. No cgroups
(``proctrack/linuxproc``, ``task/none``), no accounting storage. slurmctld runs in ``zone`` (its
``TZ``), so the times it writes are local times, as on a real controller.

:func:`unavailable` says why it cannot run here (not root, packages missing); ``.ci/run``
installs the packages.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
NODES = ("vm", "vm2")  # two slurmd on this host: a heterogeneous job needs one node per component
NODE = NODES[0]
CPUS = 2


def unavailable() -> str | None:
    """Why a real Slurm cannot run here, or None when it can."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return (
            f"{', '.join(missing)} not installed: apt-get install slurmctld slurmd slurm-client "
            "munge (.ci/run does)"
        )
    if os.geteuid() != 0:
        return "a real slurmctld and slurmd run as root here (no cgroups, SlurmUser=root)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SlurmCluster:
    """One controller and two nodes, ``vm`` and ``vm2``, with 2 CPUs each, in ``root``."""

    def __init__(self, root: Path, *, zone: str = "UTC") -> None:
        self.root = root
        self.zone = zone
        self.jobcomp_log = root / "jobcomp.log"
        self.work = root / "work"
        self._procs: list[subprocess.Popen[bytes]] = []

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), "TZ": self.zone}

    def start(self) -> SlurmCluster:
        r = self.root
        for sub in ("munge", "state", "log", "work", *(f"spool/{node}" for node in NODES)):
            (r / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        sock = r / "munge" / "sock"
        subprocess.run(
            ["munged", "--force", "-S", str(sock), f"--key-file={key}",
             f"--pid-file={r / 'munge' / 'pid'}", f"--log-file={r / 'munge' / 'log'}",
             f"--seed-file={r / 'munge' / 'seed'}"],
            check=True, capture_output=True,
        )
        self.conf.write_text(
            "\n".join(
                (
                    "ClusterName=jctest",
                    "SlurmctldHost=localhost(127.0.0.1)",
                    f"SlurmctldPort={_free_port()}",
                    "SlurmUser=root",
                    "SlurmdUser=root",
                    "AuthType=auth/munge",
                    f"AuthInfo=socket={sock}",
                    "CredType=cred/munge",
                    f"StateSaveLocation={r / 'state'}",
                    f"SlurmdSpoolDir={r / 'spool'}/%n",
                    f"SlurmctldPidFile={r / 'slurmctld.pid'}",
                    f"SlurmdPidFile={r / 'slurmd'}.%n.pid",
                    f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
                    f"SlurmdLogFile={r / 'log' / 'slurmd'}.%n.log",
                    "ProctrackType=proctrack/linuxproc",
                    "TaskPlugin=task/none",
                    "JobAcctGatherType=jobacct_gather/none",
                    "AccountingStorageType=accounting_storage/none",
                    "JobCompType=jobcomp/filetxt",
                    f"JobCompLoc={self.jobcomp_log}",
                    "SchedulerType=sched/backfill",
                    "SchedulerParameters=bf_interval=1",  # het jobs start only by backfill
                    "SelectType=select/cons_tres",
                    "SelectTypeParameters=CR_Core",
                    "MinJobAge=3600",  # squeue shows finished jobs as long as the tests need them
                    "ReturnToService=2",
                    "MpiDefault=none",
                    *(
                        f"NodeName={node} NodeHostname={socket.gethostname()} NodeAddr=127.0.0.1 "
                        f"Port={_free_port()} CPUs={CPUS} RealMemory=2000 State=UNKNOWN"
                        for node in NODES
                    ),
                    f"PartitionName=debug Nodes={','.join(NODES)} Default=YES MaxTime=INFINITE State=UP",
                    f"PartitionName=short Nodes={','.join(NODES)} MaxTime=30 State=UP",
                    "",
                )
            )
        )
        log = (r / "log" / "daemons.out").open("ab")
        self._procs.append(subprocess.Popen(["slurmctld", "-D", "-i", "-c"], env=self.env,
                                            stdout=log, stderr=log))
        for node in NODES:
            self._procs.append(subprocess.Popen(["slurmd", "-D", "-N", node], env=self.env,
                                                stdout=log, stderr=log))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            done = self.run("sinfo", "-h", "-N", "-o", "%T", check=False)
            if done.returncode == 0 and done.stdout.split() == ["idle"] * len(NODES) * 2:
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"slurm did not come up: {self.log_tail()}")

    def run(self, *args: str | bytes, check: bool = True, input: bytes | None = None
            ) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(list(args), env=self.env, capture_output=True, input=input,
                              timeout=60)
        result = subprocess.CompletedProcess(
            done.args, done.returncode, done.stdout.decode(errors="surrogateescape"),
            done.stderr.decode(errors="replace"),
        )
        if check and done.returncode != 0:
            raise RuntimeError(f"{args!r} failed: {result.stderr}")
        return result

    def sbatch(self, *args: str | bytes) -> int:
        """Submit a job (``--wrap`` or a script on stdin); its job id (the first, for an array)."""
        done = self.run("sbatch", "--parsable", *args)
        return int(done.stdout.strip().split(";")[0].split("_")[0].split("+")[0])

    def jobs(self) -> dict[int, dict[str, Any]]:
        """Every job slurmctld still holds, by job id, as ``squeue --json -t all`` shows it.

        Job names are user bytes: invalid UTF-8 is replaced, as jobcompd replaces it.
        """
        raw = subprocess.run(["squeue", "--json", "-t", "all"], env=self.env, capture_output=True,
                             check=True, timeout=60).stdout
        doc = json.loads(raw.decode(errors="replace"))
        return {int(j["job_id"]): j for j in doc["jobs"]}

    def wait_finished(self, ids: set[int], timeout: float = 120) -> dict[int, dict[str, Any]]:
        """Wait until every job of ``ids`` (and of their arrays) has ended and has its record."""
        deadline = time.monotonic() + timeout
        while True:
            jobs = self.jobs()
            mine = {i: j for i, j in jobs.items()
                    if i in ids or j.get("array_job_id") in ids or j.get("het_job_id") in ids}
            pending = [i for i, j in mine.items() if j["job_state"] in ("PENDING", "RUNNING", "COMPLETING",
                                                                          "CONFIGURING", "SUSPENDED")]
            if not pending and set(mine) >= ids:
                return mine
            if time.monotonic() > deadline:
                raise AssertionError(f"jobs still running: {pending}; {self.log_tail()}")
            time.sleep(0.5)

    def pid(self) -> int:
        return int((self.root / "slurmctld.pid").read_text().split()[0])

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return (self.root / "log" / "slurmctld.log").read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self._procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()
        pid_file = self.root / "munge" / "pid"
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError):
                pass
