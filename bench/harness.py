"""What the end-to-end benchmark needs around the processes it measures.

Process sampling from ``/proc`` (RSS, CPU ticks), read-only views of jobcompd's state database, the
number of messages a mock-cluster topic holds, a fresh mock cluster per measurement, the Debian
packages and py-spy the benchmark installs when they are missing, and the machine's description.
Nothing here knows which figure is being measured.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import re
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from tests.brokers.mockcluster import MockCluster
from tests.jobcompd_env import children

DEBIAN_PACKAGES = ("kcat", "rsyslog", "rsyslog-kafka")
CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A measurement could not be taken; the message says which step and why."""


# -- waiting -------------------------------------------------------------------------------------


def wait_until(
    done: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    interval: float = 0.1,
    alive: Callable[[], str | None] | None = None,
) -> float:
    """Poll ``done`` until it is true; return ``time.time()`` at that moment.

    ``alive`` returns a reason when a process the wait depends on has died, so a crash is reported
    at once instead of after ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        if done():
            return time.time()
        if alive is not None and (reason := alive()) is not None:
            raise BenchError(f"{what}: {reason}")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(interval)


# -- /proc ---------------------------------------------------------------------------------------


def rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) of ``pid`` in kB."""
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    return rss, hwm


def thread_cpu_seconds(pid: int) -> dict[tuple[int, str], float]:
    """The CPU time of each live thread of ``pid``, in seconds, by (thread id, name): the
    scheduler's run time of each (``/proc/PID/task/*/schedstat``, in ns), not utime + stime, which
    are counted in clock ticks (10 ms) charged to whichever thread runs at the tick — too coarse
    for a quiet minute."""
    out: dict[tuple[int, str], float] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                ns = int(fh.read().split()[0])
            with open(f"/proc/{pid}/task/{task}/comm") as fh:
                name = fh.read().strip()
            out[(int(task), name)] = ns / 1e9
    return out


def tree_thread_cpu_seconds(pid: int) -> dict[tuple[int, str], float]:
    """`thread_cpu_seconds` over `process_tree`."""
    out: dict[tuple[int, str], float] = {}
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            out.update(thread_cpu_seconds(member))
    return out


def thread_cpu_by_name(
    after: dict[tuple[int, str], float], before: dict[tuple[int, str], float] | None = None
) -> dict[str, float]:
    """The CPU seconds threads spent between two `tree_thread_cpu_seconds` (since they started,
    without ``before``), summed by name: jobcompd names its threads (``parse``, ``sender``,
    ``flush``; the main thread carries the process's), as librdkafka (``rdk:broker1``) and rsyslog
    (``in:imfile``) name theirs."""
    out: dict[str, float] = {}
    for (tid, name), seconds in after.items():
        out[name] = out.get(name, 0.0) + seconds - (before or {}).get((tid, name), 0.0)
    return out


def process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (jobcompd's parse worker)."""
    tree, todo = [pid], [pid]
    while todo:
        found = children(todo.pop())
        tree += found
        todo += found
    return tree


def tree_cpu_seconds(pid: int) -> float:
    """`thread_cpu_seconds` summed over `process_tree` (a thread or child that exited meanwhile is
    not counted)."""
    return sum(tree_thread_cpu_seconds(pid).values())


_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def lifetime_cpu_seconds(pid: int) -> float:
    """The CPU time (user + system) of ``pid`` since it started, the threads that ended included,
    and of its live descendants: ``/proc/PID/stat``, in clock ticks (10 ms), fine over a
    measurement of seconds."""
    total = 0.0
    for member in process_tree(pid):
        with contextlib.suppress(OSError), open(f"/proc/{member}/stat") as fh:
            fields = fh.read().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) * _TICK_S  # utime, stime
    return total


def reaped_cpu_seconds() -> float:
    """The CPU time (user + system) of this process's children that exited and were reaped, with
    their own reaped children: measured around a child's whole life, its every thread's, those that
    ended before it too."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True, slots=True)
class MachineTicks:
    """The machine's CPU time so far, every core's (``/proc/stat``), in clock ticks: busy (not idle,
    not waiting for a disk), all, and stolen (a virtual machine's, run by its host elsewhere)."""

    busy: int
    total: int
    steal: int

    @classmethod
    def now(cls) -> MachineTicks | None:
        """``None`` where ``/proc/stat`` cannot be read."""
        try:
            with open("/proc/stat") as fh:
                fields = [int(x) for x in fh.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        user, nice, system, idle, iowait, irq, softirq, steal = fields + [0] * (8 - len(fields))
        busy = user + nice + system + irq + softirq
        return cls(busy, busy + idle + iowait + steal, steal)


@dataclass(frozen=True, slots=True)
class MachineShare:
    """How busy the machine's cores were over a measurement, every process's work counted (the
    brokers', the benchmark's own, anything else running): whether the cores themselves bound it."""

    cores: float  # busy, on average, of ``cpus``
    cpus: int
    steal: float  # share of the time the host ran something else on our cores

    @classmethod
    def between(cls, before: MachineTicks | None, after: MachineTicks | None) -> MachineShare | None:
        if before is None or after is None or after.total <= before.total:
            return None
        cpus = os.cpu_count() or 1
        total = after.total - before.total
        return cls(cpus * (after.busy - before.busy) / total, cpus, (after.steal - before.steal) / total)

    def text(self) -> str:
        stolen = f", {100 * self.steal:.1f} % stolen by the host" if self.steal >= 0.005 else ""
        return f"the machine {self.cores:.2f} of {self.cpus} cores busy{stolen}"


@dataclass(frozen=True, slots=True)
class CpuShare:
    """The CPU a shipper and the brokers used for ``records`` over ``elapsed`` seconds (and how busy
    the whole machine was meanwhile, where measured)."""

    shipper_s: float
    brokers_s: float
    records: int
    elapsed: float
    machine: MachineShare | None = None
    threads: dict[str, float] = field(default_factory=dict)  # the shipper's CPU s by thread name

    @property
    def shipper_us(self) -> float:
        """The shipper's CPU a record, in µs."""
        return 1e6 * self.shipper_s / self.records

    @property
    def brokers_us(self) -> float:
        return 1e6 * self.brokers_s / self.records

    @property
    def cores(self) -> float:
        """How many cores the shipper kept busy on average."""
        return self.shipper_s / self.elapsed

    def figures(self) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "cpu_us": self.shipper_us, "brokers_us": self.brokers_us, "cores": self.cores,
        }
        if self.machine is not None:
            figures |= {"machine_cores": self.machine.cores, "steal": self.machine.steal}
        if self.threads:
            figures["threads"] = self.busiest()
        return figures

    def busiest(self, count: int = 5) -> list[tuple[str, float, float]]:
        """The shipper's ``count`` busiest threads (by name): each one's CPU a record (µs) and the
        share of the elapsed time it ran. The one that ran nearest all the time is the one the
        others wait for, if any is."""
        top = sorted(self.threads.items(), key=lambda item: -item[1])[:count]
        return [(name, 1e6 * s / self.records, s / self.elapsed) for name, s in top if s > 0]

    def text(self) -> str:
        machine = f"; {self.machine.text()}" if self.machine is not None else ""
        threads = f"; {threads_text(self.busiest())}" if self.threads else ""
        return (f"CPU a record {self.shipper_us:.2f} µs ({self.cores:.2f} cores busy), "
                f"the brokers {self.brokers_us:.2f} µs{machine}{threads}")


def threads_text(busiest: list[tuple[str, float, float]]) -> str:
    """`CpuShare.busiest` as text."""
    return "busiest threads: " + ", ".join(
        f"{name} {us:.2f} µs ({100 * share:.0f} % of the time)" for name, us, share in busiest
    )


class RssSampler:
    """Samples the VmRSS of a process and its descendants every ``interval`` s on a thread.

    ``peak_rss_kb`` is the highest sum seen in one sample; ``hwm_kb`` sums each member's own
    high-water mark (VmHWM), an upper bound since the members' peaks need not coincide.
    """

    def __init__(self, pid: int, interval: float = 0.1) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_rss_kb = 0
        self.hwm_kb = 0
        self._hwm: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)

    def start(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def sample(self) -> None:
        rss = 0
        for pid in process_tree(self.pid):
            try:
                member_rss, member_hwm = rss_kb(pid)
            except OSError:
                continue
            rss += member_rss
            self._hwm[pid] = max(self._hwm.get(pid, 0), member_hwm)
        self.peak_rss_kb = max(self.peak_rss_kb, rss)
        self.hwm_kb = sum(self._hwm.values())

    def stop(self) -> None:
        self.sample()
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def _set_pdeathsig() -> None:
    """In a child before exec: die with the benchmark, even if it is killed with -9."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
    """Popen a helper process that dies with the benchmark."""
    return subprocess.Popen(list(argv), preexec_fn=_set_pdeathsig, **kw)  # type: ignore[call-overload]


def terminate(
    proc: subprocess.Popen[bytes] | None, *, sig: int = signal.SIGTERM, timeout: float = 15
) -> None:
    """Signal ``proc`` and reap it, killing it if it does not exit within ``timeout``."""
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- jobcompd's state, read-only -----------------------------------------------------------------


class StateView:
    """Read-only queries on a running jobcompd's ``jobcompd.db`` (never blocks the writer)."""

    def __init__(self, db: Path) -> None:
        self.db = db

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[tuple[Any, ...]]:
        if not self.db.exists():
            return []
        con = sqlite3.connect(f"file:{self.db}?mode=ro", uri=True, timeout=10)
        try:
            return con.execute(sql, tuple(args)).fetchall()
        except sqlite3.OperationalError:
            return []
        finally:
            con.close()

    def counter(self, name: str) -> int:
        """A durable counter from the ``meta`` table (``spooled_total``, ``delivered_total``, …)."""
        rows = self._query("SELECT value FROM meta WHERE key = ?", (name,))
        return int(rows[0][0] or 0) if rows else 0

    def count(self, table: str) -> int:
        """Rows of a state table; records for ``spool`` (which holds them by batch)."""
        if table == "spool":
            rows = self._query("SELECT coalesce(sum(waiting), 0) FROM spool_waiting")
            return int(rows[0][0]) if rows else 0
        rows = self._query(f"SELECT count(*) FROM {table}")
        return int(rows[0][0]) if rows else 0

    def last_delivered_at(self) -> float:
        """When the last delivery reports were committed (wall-clock seconds)."""
        rows = self._query("SELECT value FROM meta WHERE key = 'last_delivered_at'")
        if not rows or rows[0][0] is None:
            raise BenchError("nothing was delivered")
        return float(rows[0][0])

    def counters(self) -> dict[str, int]:
        """Every durable counter at one instant."""
        return {
            str(k): int(v or 0)
            for k, v in self._query("SELECT key, value FROM meta WHERE key LIKE '%_total'")
        }


def delivery_log_times(log: str) -> dict[str, float]:
    """Record id → when its delivery report was committed, from a daemon's JSON log (debug_jobcomp)."""
    times = {}
    for line in log.splitlines():
        if not line.startswith("{") or '"job delivered"' not in line:
            continue
        entry = json.loads(line)
        times[str(entry["rid"])] = datetime.fromisoformat(entry["timestamp"]).timestamp()
    return times


class CounterTrace:
    """``spooled_total`` and ``delivered_total`` sampled over a run, to see the rate change as it goes.

    The spool and the known record ids grow during a run (replay also reads ahead of sending), so
    the delivery rate over the first and the last tenth is printed next to the average.
    """

    def __init__(self, state: StateView, start: float) -> None:
        self.state = state
        self.start = start
        self.samples: list[tuple[float, int, int]] = []  # (time.time(), spooled, delivered)

    def sample(self) -> tuple[int, int]:
        counters = self.state.counters()
        spooled, delivered = counters.get("spooled_total", 0), counters.get("delivered_total", 0)
        self.samples.append((time.time(), spooled, delivered))
        return spooled, delivered

    def reached(self, column: int, value: int) -> float | None:
        """When the counter (1 spooled, 2 delivered) was first seen at ``value`` or above."""
        return next((s[0] for s in self.samples if s[column] >= value), None)

    def tenths(self, n: int, end: float) -> str:
        """Delivery rate in the first and the last tenth of ``n`` records, as text."""
        first = self.reached(2, n // 10)
        last = self.reached(2, n - n // 10)
        if first is None or last is None or first <= self.start or end <= last:
            return "first/last tenth: too short to tell"
        return (
            f"delivered {n // 10 / (first - self.start):,.0f}/s over the first tenth, "
            f"{n // 10 / (end - last):,.0f}/s over the last (sampled every 0.25 s)"
        )


# -- the broker ----------------------------------------------------------------------------------


@contextlib.contextmanager
def mock_cluster(topic: str, partitions: int) -> Iterator[MockCluster]:
    """A fresh 3-broker mock cluster (its own process) with ``topic`` created, stopped afterwards.

    A fresh cluster per measurement keeps measurements apart (and the mock's memory bounded: it
    keeps ~5 MB per partition).
    """
    cluster = MockCluster(brokers=3).start()
    try:
        cluster.create_topic(topic, partitions)
        yield cluster
    finally:
        cluster.stop()


class TopicSize:
    """How many messages a topic holds: the sum of its partitions' high watermarks.

    The mock trims old messages but never lowers a high watermark, so on a topic created for one
    measurement this counts every message the brokers accepted, without reading any back.
    """

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        self._consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "jobcompd-bench-size", "enable.auto.commit": False}
        )
        self._parts = [TopicPartition(topic, p) for p in range(partitions)]

    def __call__(self) -> int:
        return sum(self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._parts)

    def close(self) -> None:
        self._consumer.close()


def append_bulk(src: Path, dst: Path, chunk: int = 4 << 20) -> None:
    """Append ``src`` to ``dst`` in large writes cut at line ends (O_APPEND, like slurmctld)."""
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        with open(src, "rb") as fh:
            rest = b""
            while block := fh.read(chunk):
                block = rest + block
                cut = block.rfind(b"\n") + 1
                view = memoryview(block)[:cut]
                while view:
                    view = view[os.write(fd, view) :]
                rest = block[cut:]
            if rest:
                os.write(fd, rest)
    finally:
        os.close(fd)


# -- tools ---------------------------------------------------------------------------------------


def _rsyslog_module(name: str) -> Path | None:
    for base in (
        "/usr/lib/x86_64-linux-gnu/rsyslog",
        "/usr/lib/aarch64-linux-gnu/rsyslog",
        "/usr/lib/rsyslog",
    ):
        if Path(base, name).exists():
            return Path(base, name)
    return None


def baseline_tools_present() -> bool:
    return bool(shutil.which("kcat") and shutil.which("rsyslogd") and _rsyslog_module("omkafka.so"))


def ensure_debian_packages() -> str | None:
    """Install kcat, rsyslog and rsyslog-kafka if missing; return why the baselines cannot run, or None.

    ``apt-get update`` runs only when apt does not know the packages yet. The packages' services are
    kept from starting (a policy-rc.d that refuses, only while installing, if the system has none):
    the benchmark runs its own rsyslogd, never the system's.
    """
    if baseline_tools_present():
        return None
    install = "apt-get install -y --no-install-recommends " + " ".join(DEBIAN_PACKAGES)
    if os.geteuid() != 0:
        return (
            f"the kcat and rsyslog baselines need the Debian packages {', '.join(DEBIAN_PACKAGES)}; "
            f"run `make bench` as root to install them, or install them first: sudo {install}"
        )
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    known = (
        subprocess.run(["apt-cache", "show", *DEBIAN_PACKAGES], capture_output=True, env=env).returncode == 0
    )
    if not known:
        print("bench: apt-get update (the package lists do not know kcat/rsyslog-kafka yet)", flush=True)
        subprocess.run(["apt-get", "update"], check=False, env=env, stdout=subprocess.DEVNULL)
    policy = Path("/usr/sbin/policy-rc.d")
    own_policy = not policy.exists()
    try:
        if own_policy:
            policy.write_text("#!/bin/sh\n# written by jobcompd's bench while installing\nexit 101\n")
            policy.chmod(0o755)
        print(f"bench: {install}", flush=True)
        done = subprocess.run(install.split(), env=env, capture_output=True, text=True)
    finally:
        if own_policy:
            policy.unlink(missing_ok=True)
    if done.returncode != 0 or not baseline_tools_present():
        return f"`{install}` failed:\n{done.stdout[-1500:]}{done.stderr[-1500:]}"
    return None


def ensure_py_spy() -> str | None:
    """The py-spy next to this interpreter (pip-installed into the venv if missing), or None."""
    candidate = Path(sys.executable).parent / "py-spy"
    if not candidate.exists():
        print("bench: pip install py-spy (for the profile)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "py-spy"],
            check=False,
        )
    if candidate.exists():
        return str(candidate)
    return shutil.which("py-spy")


def _first_line(argv: Sequence[str]) -> str:
    try:
        out = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).strip().splitlines()
    return text[0] if text else "?"


@dataclass(frozen=True)
class Machine:
    """What the figures were measured on."""

    cpus: int
    cpu_model: str
    memory_gib: float
    kernel: str
    python: str
    librdkafka: str
    kcat: str
    rsyslog: str
    load_at_start: str

    @classmethod
    def describe(cls) -> Machine:
        import confluent_kafka

        model = "?"
        with contextlib.suppress(OSError):
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        mem_kb = 0
        with contextlib.suppress(OSError):
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem_kb = int(line.split()[1])
        kcat = "not installed"
        if shutil.which("kcat"):
            version = subprocess.run(["kcat", "-V"], capture_output=True, text=True).stdout
            found = re.search(r"Version (\S+).*?(librdkafka \S+)", version)
            kcat = f"{found.group(1)} ({found.group(2)})" if found else "?"
        rsyslog = "not installed"
        if shutil.which("rsyslogd"):
            rsyslog = _first_line(["rsyslogd", "-v"]).replace(" compiled with:", "").replace("  ", " ")
        return cls(
            cpus=len(os.sched_getaffinity(0)),
            cpu_model=model,
            memory_gib=mem_kb / 1024 / 1024,
            kernel=platform.release(),
            python=platform.python_version(),
            librdkafka=f"{confluent_kafka.libversion()[0]} (confluent-kafka {confluent_kafka.version()})",
            kcat=kcat,
            rsyslog=rsyslog,
            load_at_start="%.2f %.2f %.2f" % os.getloadavg(),
        )


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest-rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, int(round(q * len(sorted_values) + 0.5)) - 1))
    return sorted_values[index]
