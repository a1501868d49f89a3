"""A configured jobcompd for end-to-end tests: config files in a temp dir, the CLI as a subprocess.

Reused by the replay, daemon and benchmark tests; it only writes files and runs the installed
``jobcompd`` console script — the code under test runs in its own process.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from confluent_kafka import Message

from jobcompd.encode import Encoder
from jobcompd.joining import parse_records
from jobcompd.record import JobRecord

JOBCOMPD = str(Path(sys.executable).parent / "jobcompd")

SPREAD_BY_KEY = 'partitioning = "key"\n'
"""``kafka_toml`` for a test that reads back more from librdkafka's mock cluster than it keeps: about
5 MB a partition, older message sets dropped. Records sent as by default (``"sticky"``) land a
burst at a time on one partition, and a few bursts on one partition are more than it keeps; by key
they spread evenly. (tansu keeps everything: its tests run the default.)"""


@dataclass
class JobcompdEnv:
    """Files for one jobcompd instance under ``root``: config, librdkafka properties, state dir."""

    root: Path
    bootstrap: str
    topic: str = "mycluster"
    params: str = ""
    properties: dict[str, str] = field(default_factory=dict)
    extra_toml: str = ""
    source_toml: str = ""  # more [source] keys
    kafka_toml: str = ""  # more [kafka] keys
    synchronous: str = "normal"  # the tests' choice; "full" is jobcompd's default
    log_path: Path | None = None

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.log_path or self.root / "slurm_jobcomp.log"
        self.write_config()

    @property
    def config(self) -> Path:
        return self.root / "jobcompd.toml"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def db(self) -> Path:
        return self.state_dir / "jobcompd.db"

    def write_config(self) -> None:
        props = {"bootstrap.servers": self.bootstrap, "linger.ms": "5", **self.properties}
        (self.root / "rdkafka.conf").write_text(
            "# written by tests/jobcompd_env.py\n" + "".join(f"{k}={v}\n" for k, v in props.items())
        )
        params = ",".join(p for p in (f"topic={self.topic}", self.params) if p)
        self.config.write_text(
            f'[source]\npath = "{self.log_path}"\ntimezone = "UTC"\n{self.source_toml}'
            f'[kafka]\nrdkafka_conf = "{self.root / "rdkafka.conf"}"\nparams = "{params}"\n{self.kafka_toml}'
            f'[state]\ndir = "{self.state_dir}"\nsynchronous = "{self.synchronous}"\n' + self.extra_toml
        )

    def run(self, *args: str, timeout: float = 300, **kw: Any) -> subprocess.CompletedProcess[str]:
        """``jobcompd ARGS -c CONFIG`` to completion."""
        return subprocess.run(
            [JOBCOMPD, *args, "-c", str(self.config)],
            capture_output=True,
            text=True,
            timeout=timeout,
            **kw,
        )

    def popen(self, *args: str, **kw: Any) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [JOBCOMPD, *args, "-c", str(self.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kw,
        )

    def count(self, table: str) -> int:
        """Rows in a state table (records for ``spool``, which holds them by batch), read without
        disturbing a running jobcompd."""
        if table == "spool":
            return self._number("SELECT coalesce(sum(waiting), 0) FROM spool_waiting")
        return self._number(f"SELECT count(*) FROM {table}")

    def spool_rows(self) -> int:
        """Rows of the spool: one per commit of what was read (while its records wait)."""
        return self._number("SELECT count(*) FROM spool")

    def delivered(self) -> int:
        """How many records the state has settled as delivered (its ``delivered_total``)."""
        return self._number("SELECT value FROM meta WHERE key = 'delivered_total'")

    def known_again(self) -> int:
        """How many records read were known already and left out (its ``already_known_total``)."""
        return self._number("SELECT value FROM meta WHERE key = 'already_known_total'")

    def _number(self, query: str) -> int:
        if not self.db.exists():
            return 0
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute(query).fetchone()
        except sqlite3.OperationalError:
            return 0
        finally:
            con.close()
        return 0 if row is None or row[0] is None else int(row[0])

    def dead_letters(self) -> list[dict[str, Any]]:
        done = self.run("deadletter", "list", "--json")
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))


def _stat(pid: int | str) -> list[str]:
    """The fields of ``/proc/PID/stat`` after the command name: state first, then the parent pid."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def alive(pid: int) -> bool:
    """Running: neither gone nor a zombie (a container's init may never reap an orphan)."""
    try:
        return _stat(pid)[0] not in ("Z", "X")
    except OSError:
        return False


def children(parent: int) -> list[int]:
    """The running (not zombie) child processes of ``parent``."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(entry)
        except OSError:
            continue
        if int(fields[1]) == parent and fields[0] not in ("Z", "X"):
            pids.append(int(entry))
    return pids


def parse_workers(parent: int) -> list[int]:
    """Live parse-worker children of ``parent`` (``python -m jobcompd._parse_child``)."""
    workers = []
    for pid in children(parent):
        try:
            if b"jobcompd._parse_child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                workers.append(pid)
        except OSError:
            continue
    return workers


def thread_names(pid: int) -> set[str]:
    """The names the OS gives the threads of ``pid`` (``/proc/PID/task/*/comm``)."""
    names = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            names.add(Path(f"/proc/{pid}/task/{task}/comm").read_text().strip())
        except OSError:  # ended meanwhile
            continue
    return names


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``predicate`` until it is true, or fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class DaemonProcess:
    """``jobcompd run`` as a real subprocess: logs to a file, signals, kill -9, restart."""

    def __init__(self, env: JobcompdEnv, *extra: str) -> None:
        self.env = env
        self.extra = extra
        self.log = env.root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._mark = 0

    def start(self, *, wait_ready: bool = True, timeout: float = 30) -> DaemonProcess:
        self._mark = self.log.stat().st_size if self.log.exists() else 0
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [JOBCOMPD, "run", "-c", str(self.env.config), *self.extra], stdout=out, stderr=out
            )
        if wait_ready:
            self.wait_log("jobcompd started", timeout=timeout)
        return self

    def output(self) -> str:
        """What the daemon logged since its last start."""
        if not self.log.exists():
            return ""
        with open(self.log, "rb") as fh:
            fh.seek(self._mark)
            return fh.read().decode(errors="replace")

    def wait_log(self, text: str, *, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon exited ({self.proc.returncode}):\n{self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} in the daemon log:\n{self.output()[-3000:]}")
            time.sleep(0.05)

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"daemon ignored SIGTERM:\n{self.output()[-3000:]}") from None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def expected_messages(lines: list[bytes], cluster: str | None = None) -> dict[str, bytes]:
    """Record id → the plugin JSON each record must arrive as (times in UTC).

    Every line must belong to a record (a record may span lines: line breaks in its name).
    """
    encoder = Encoder(ZoneInfo("UTC"), cluster)
    out: dict[str, bytes] = {}
    for index, count, record in parse_records(lines):
        assert isinstance(record, JobRecord), (index, record)
        out[encoder.record_id(b"".join(lines[index : index + count]), record)] = encoder.encode(record)
    return out


@dataclass
class Arrival:
    """What arrived in a topic, checked record by record against what was expected."""

    missing: set[str]
    unexpected: set[str]
    duplicates: int
    wrong_payload: list[str]
    bad_header: list[str]

    @property
    def exactly_once(self) -> bool:
        return not (
            self.missing or self.unexpected or self.duplicates or self.wrong_payload or self.bad_header
        )


def check_arrival(messages: list[Message], expected: dict[str, bytes]) -> Arrival:
    keys = Counter()
    wrong: list[str] = []
    bad_header: list[str] = []
    for msg in messages:
        key = (msg.key() or b"").decode()
        keys[key] += 1
        if key in expected and msg.value() != expected[key]:
            wrong.append(key)
        headers = dict(msg.headers() or [])
        if headers.get("record_id") != key.encode():
            bad_header.append(key)
    return Arrival(
        missing=set(expected) - set(keys),
        unexpected=set(keys) - set(expected),
        duplicates=sum(n - 1 for n in keys.values() if n > 1),
        wrong_payload=wrong,
        bad_header=bad_header,
    )


def summary_json(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The ``--json`` summary line a replay printed last on stdout."""
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@contextmanager
def mounted_tmpfs(where: Path, size: str, *, mode: str = "0755", required: bool = False) -> Iterator[Path]:
    """A small tmpfs of our own at ``where`` (for a full or read-only disk), unmounted after.

    Where mounting is not allowed (not root) the test is skipped — or fails, when ``required``:
    CI runs as root, so a test that must run there says so instead of passing quietly.
    """
    give_up = pytest.fail if required else pytest.skip
    if os.geteuid() != 0 or shutil.which("mount") is None:
        give_up("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode={mode}", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        give_up(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        unmounted = subprocess.run(["umount", str(where)], capture_output=True, check=False)
        if unmounted.returncode != 0:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
