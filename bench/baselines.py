"""The two baselines jobcompd's throughput is compared with, on the same lines and the same broker.

* ``kcat -P -l FILE``: librdkafka's own command-line producer, one message per line, no parsing —
  the ceiling for "a line in, a message out";
* rsyslog ``imfile`` → ``omkafka``: the usual way to ship a log file to Kafka, run in the foreground
  with its own configuration and work directory (never the system's rsyslog service): started on
  the whole file, as ``jobcompd replay`` is (:func:`run_rsyslog`), and running while the lines are
  appended in bulk, as ``jobcompd run`` is measured (``appended``).

Both get the producer settings jobcompd runs with: ``linger.ms=5`` and an idempotent producer
(``enable.idempotence=true``, hence ``acks=all``).
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.harness import (
    BenchError,
    CpuShare,
    MachineShare,
    MachineTicks,
    TopicSize,
    append_bulk,
    lifetime_cpu_seconds,
    spawn,
    terminate,
    thread_cpu_by_name,
    tree_thread_cpu_seconds,
    wait_until,
)
from tests.brokers.mockcluster import ApiKey, MockCluster

PRODUCER_PROPERTIES = {"linger.ms": "5", "enable.idempotence": "true"}


@dataclass(frozen=True)
class BaselineRun:
    """One baseline's run: ``elapsed`` seconds from its start to its last message acknowledged."""

    elapsed: float
    stored: int  # messages the topic holds afterwards
    note: str = ""
    cpu: CpuShare | None = None  # rsyslogd's and the brokers' from its start to the last message stored


def run_kcat(
    lines: Path, cluster: MockCluster, topic: str, partitions: int, *, timeout: float
) -> BaselineRun:
    """``kcat -P -l``, timed from exec to exit (kcat flushes and waits for every delivery report)."""
    argv = ["kcat", "-P", "-b", cluster.bootstrap, "-t", topic, "-l", "-q"]
    for key, value in PRODUCER_PROPERTIES.items():
        argv += ["-X", f"{key}={value}"]
    argv.append(str(lines))
    start = time.monotonic()
    proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        terminate(proc)
        raise BenchError(f"kcat did not finish within {timeout:.0f} s") from None
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        raise BenchError(f"kcat exited {proc.returncode}: {err.decode(errors='replace')[-1000:]}")
    size = TopicSize(cluster.bootstrap, topic, partitions)
    try:
        stored = size()
    finally:
        size.close()
    return BaselineRun(elapsed, stored)


def rsyslog_config(workdir: Path, lines: Path, cluster: MockCluster, topic: str) -> str:
    """An rsyslog configuration of its own: imfile reads ``lines`` from the start, omkafka sends each."""
    brokers = ", ".join(f'"{b}"' for b in cluster.bootstrap.split(","))
    conf_params = ", ".join(f'"{k}={v}"' for k, v in PRODUCER_PROPERTIES.items())
    return f"""# written by jobcompd's bench/baselines.py: a private rsyslogd, not the system's
global(workDirectory="{workdir / "work"}" maxMessageSize="64k")
module(load="impstats" interval="1" format="json" resetCounters="off"
       log.syslog="off" log.file="{workdir / "impstats.json"}")
module(load="imfile" mode="inotify")
module(load="omkafka")
template(name="line" type="string" string="%rawmsg%")
ruleset(name="tokafka") {{
  action(type="omkafka" broker=[{brokers}] topic="{topic}" template="line"
         confParam=[{conf_params}])
}}
input(type="imfile" file="{lines}" tag="jobcomp" ruleset="tokafka"
      readMode="0" freshStartTail="off")
"""


WARMUP_LINE = b"rsyslog warm-up\n"


def run_rsyslog(
    lines: Path,
    expected: int,
    cluster: MockCluster,
    topic: str,
    partitions: int,
    workdir: Path,
    *,
    timeout: float,
    appended: bool = False,
) -> BaselineRun:
    """rsyslogd in the foreground on ``lines``, timed from exec to the broker holding every line;
    ``appended``: following a log of its own, ``lines`` appended to it in bulk while it runs, timed
    from the first byte appended, as ``jobcompd run`` is. There one line written and shipped first
    (not counted) has it watching the file and connected, as the daemon is when the bulk comes.

    omkafka's own ``acked`` counter (impstats) lags: it is updated when omkafka polls librdkafka, which
    it does while sending, so the last few thousand acknowledgements show up late or only at
    shutdown. The end is therefore taken from the broker: the topic's high watermarks tell when
    every line is stored, and the mock cluster's request log gives the time of the last Produce
    request (on the same monotonic clock as ``time.monotonic()``).
    """
    followed = workdir / "appended.log" if appended else lines
    if appended:
        workdir.mkdir(parents=True, exist_ok=True)
        followed.write_bytes(b"")
    warm = 1 if appended else 0
    size = TopicSize(cluster.bootstrap, topic, partitions)
    conf = rsyslog_configured(followed, cluster, topic, workdir)
    assert cluster.pid is not None
    cluster_pid = cluster.pid

    def rsyslogd() -> int:
        return int((workdir / "rsyslogd.pid").read_text())

    def begin() -> tuple[float, MachineTicks | None, float]:  # the brokers' CPU, the machine's, the clock
        return lifetime_cpu_seconds(cluster_pid), MachineTicks.now(), time.monotonic()

    try:
        cluster.clear_requests()
        cluster.start_request_tracking()
        shipper0 = 0.0
        threads0: dict[tuple[int, str], float] = {}  # (from exec: each thread's whole run)
        brokers0, ticks0, start = begin()  # from exec
        with rsyslog_running(conf, workdir) as alive:
            if appended:  # from the first byte appended, once the warm-up line is shipped
                with open(followed, "ab") as fh:
                    fh.write(WARMUP_LINE)
                wait_until(lambda: size() >= warm, timeout=60, what="rsyslog warm-up → Kafka", alive=alive)
                shipper0, threads0 = lifetime_cpu_seconds(rsyslogd()), tree_thread_cpu_seconds(rsyslogd())
                cluster.clear_requests()
                brokers0, ticks0, start = begin()
                append_bulk(lines, followed)
            written = time.monotonic()
            wait_until(
                lambda: size() >= expected + warm,
                timeout=timeout,
                what="rsyslog → Kafka",
                interval=0.05,
                alive=alive,
            )
            polled = time.monotonic()
            machine = MachineShare.between(ticks0, MachineTicks.now())
            shipper = lifetime_cpu_seconds(rsyslogd()) - shipper0
            threads = thread_cpu_by_name(tree_thread_cpu_seconds(rsyslogd()), threads0)
            brokers = lifetime_cpu_seconds(cluster.pid) - brokers0
            cluster.stop_request_tracking()
            produce = [r.timestamp_us for r in cluster.requests() if r.api_key == ApiKey.PRODUCE]
            last = max(produce) / 1e6 if produce else polled
            end = last if start < last <= polled else polled
            stored = size() - warm
            acked = _omkafka_acked(workdir / "impstats.json")
    finally:
        size.close()
        cluster.stop_request_tracking()
        cluster.clear_requests()
    note = ""
    if appended:
        note = f"file written in {written - start:.2f} s"
    elif acked is not None:
        note = f"omkafka impstats acked={acked} when the broker held all {expected}"
    cpu = CpuShare(shipper, brokers, expected, end - start, machine, threads)
    return BaselineRun(end - start, stored, note, cpu)


def rsyslog_configured(lines: Path, cluster: MockCluster, topic: str, workdir: Path) -> Path:
    """Write (and have rsyslogd check) a private configuration: ``lines`` → ``topic``; its path."""
    (workdir / "work").mkdir(parents=True, exist_ok=True)
    conf = workdir / "rsyslog.conf"
    conf.write_text(rsyslog_config(workdir, lines, cluster, topic))
    check = subprocess.run(["rsyslogd", "-N1", "-f", str(conf)], capture_output=True, text=True)
    if check.returncode != 0:
        raise BenchError(f"rsyslogd refuses the configuration: {check.stderr[-1500:]}")
    return conf


@contextlib.contextmanager
def rsyslog_running(conf: Path, workdir: Path) -> Iterator[Callable[[], str | None]]:
    """rsyslogd in the foreground with ``conf`` (see :func:`rsyslog_configured`); yields a function
    that says why it exited, or None while it runs."""
    log = open(workdir / "rsyslogd.log", "wb")  # noqa: SIM115 - closed below
    proc = None
    try:
        proc = spawn(
            ["rsyslogd", "-n", "-f", str(conf), "-i", str(workdir / "rsyslogd.pid")],
            stdout=log,
            stderr=subprocess.STDOUT,
        )

        def alive() -> str | None:
            if proc.poll() is None:
                return None
            return f"rsyslogd exited {proc.returncode}: {(workdir / 'rsyslogd.log').read_text()[-1500:]}"

        yield alive
    finally:
        terminate(proc)
        log.close()


def _omkafka_acked(stats: Path) -> int | None:
    acked = None
    try:
        text = stats.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        brace = line.find("{")
        if brace < 0 or '"omkafka"' not in line:
            continue
        try:
            doc = json.loads(line[brace:])
        except ValueError:
            continue
        if doc.get("origin") == "omkafka":
            acked = int(doc.get("acked", 0))
    return acked
