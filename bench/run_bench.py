"""End-to-end benchmark of jobcompd against a local Kafka broker: ``make bench``.

Every figure is taken in one run, on this machine, against librdkafka's mock cluster (a
three-broker Kafka in its own process, on loopback; a fresh one per measurement):

1. throughput: N mixed-generation lines from the first byte to the last delivery report, through
   ``jobcompd replay`` and through the live daemon (``jobcompd run``, lines appended in bulk), next
   to two baselines on the same lines and broker: ``kcat -P -l`` and rsyslog imfile → omkafka,
   timed as each of jobcompd's is — started on the whole file (``replay``), and running while the
   lines are appended (``run``: the goal of ``run`` is a ratio to this one);
   and the floor: confluent-kafka alone (``bench/bulk_producer.py``) sending the records of the
   same lines as jobcompd sends them (through jobcompd's channel where the compiled send loop is
   in use), with nothing else to do (no reading, parsing or state).
   ``replay`` and ``run`` in the default configuration and their rsyslog baselines are measured in
   ``--baseline-runs`` rounds (5), each of the four once a round, in turn (rsyslog, ``replay``,
   rsyslog appended, ``run``): each rate is the median of its rounds, and each ratio to rsyslog
   the median of the rounds' ratios, of runs seconds apart (the machine's speed drifts over
   minutes). kcat is the median of as many runs; the other steps run once;
2. latency: lines appended one at a time at a steady rate, write → delivery report (the daemon's
   "job delivered" log line, ``debug_jobcomp``) and write → a consumer receiving the message
   (matched by record id); then rsyslog imfile → omkafka on the same lines at the same rate, write →
   the same consumer (matched by the line's ``JobId=``), the like-for-like baseline; and the floor:
   librdkafka alone (``bench/steady_producer.py``) producing the same records at the same rate,
   produce → consumer, keyed by record id and partitioned as jobcompd's default (sticky) and as
   ``kafka.partitioning = "key"`` send them, and without a key as rsyslog does;
3. memory: the peak RSS of the daemon (parse worker included, if any) while a 1M-record backlog builds up
   (brokers down) and drains;
4. recovery: restart with 1M records in the spool: time to the first delivery and to an empty spool;
5. idle: the CPU of the daemon and its parse worker over a quiet minute;
then a py-spy profile of replay and of the daemon on the same workload, reduced to hot spots.

Producers everywhere: ``linger.ms=5``, idempotent (``acks=all``). ``--quick`` runs everything in a
few minutes with smaller figures. The machine may be shared: the load average is printed, and the
ratios to the baselines measured in the same run are the figures to compare between runs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, TopicPartition

from bench import baselines, hotspots
from bench.harness import (
    BenchError,
    CounterTrace,
    CpuShare,
    Machine,
    MachineShare,
    MachineTicks,
    RssSampler,
    StateView,
    append_bulk,
    delivery_log_times,
    ensure_debian_packages,
    ensure_py_spy,
    lifetime_cpu_seconds,
    mock_cluster,
    percentile,
    reaped_cpu_seconds,
    spawn,
    terminate,
    thread_cpu_by_name,
    threads_text,
    tree_cpu_seconds,
    tree_thread_cpu_seconds,
    wait_until,
)
from jobcompd.encode import Encoder
from jobcompd.record import ParseError, parse_line
from tests.jobcompd_env import JOBCOMPD, DaemonProcess, JobcompdEnv
from tests.slurmctld import SlurmctldWriter, mixed_lines

# Issue 16's goals: throughput as a ratio to rsyslog measured in the same run (machines of this
# class differ 2-3x from one session to the next), latency no worse than rsyslog's.
GOAL_RSYSLOG_RATIO = 1.0  # records/s of jobcompd over rsyslog imfile → omkafka's, end to end
GOAL_RSS_MB = 60.0  # at a 1M-record backlog
GOAL_IDLE_PCT = 0.1  # of one core

TOPIC = "bench"
WARMUP_LINES = 50
SLOW_WRITE_S = 0.005  # a write() of the latency runs' writer that took longer is printed
WORKER_TAG = {False: "", True: " (parse_worker = true)"}
DEFAULT_PARTITIONING = "sticky"  # kafka.partitioning's default: the rows without a tag
OTHER_PARTITIONING = "key"  # measured once more in a run of its own
PARTITIONING_TAG = {
    DEFAULT_PARTITIONING: "", OTHER_PARTITIONING: f' (kafka.partitioning = "{OTHER_PARTITIONING}")'
}
FLOOR_MODE = {"sticky": "sticky", "key": "keyed"}  # the latency floor that sends as each does
MEASUREMENTS = (
    "replay",
    "replay-worker",
    "replay-key",
    "daemon",
    "daemon-worker",
    "daemon-key",
    "kcat",
    "rsyslog",
    "rsyslog-run",
    "floor",
    "latency",
    "latency-rsyslog",
    "latency-floor",
    "memory",
    "recovery",
    "idle",
    "profile",
)


@dataclass
class Run:
    """One benchmark run: its options, its workspace, the lines file, and what was measured."""

    args: argparse.Namespace
    workspace: Path
    lines_file: Path
    n: int
    baselines_unavailable: str | None = None
    figures: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    profile: list[str] = field(default_factory=list)

    @property
    def partitions(self) -> int:
        return int(self.args.partitions)

    def timeout(self, records: int | None = None) -> float:
        """How long any step on ``records`` may take before the run gives up on it."""
        return max(180.0, (records or self.n) / 2_000)

    def discard(self, directory: Path) -> None:
        """A measured run's directory (its copy of the lines, its state) removed, unless
        ``--keep``: the rounds would otherwise hold some 6 GB at once."""
        if not self.args.keep:
            shutil.rmtree(directory, ignore_errors=True)

    def env(
        self, name: str, bootstrap: str, *, parse_worker: bool = False, log_deliveries: bool = False,
        partitioning: str = DEFAULT_PARTITIONING,
    ) -> JobcompdEnv:
        """A jobcompd configuration of its own under the workspace (state, log, rdkafka.conf).

        linger.ms=5 (JobcompdEnv's default); jobcompd adds enable.idempotence and acks=all itself.
        The state keeps jobcompd's default ``synchronous = "full"`` (the tests use "normal").
        The spool limit is raised above the backlog the run builds, so reading never pauses.
        ``log_deliveries`` logs each delivery report as JSON (``debug_jobcomp``); ``partitioning``
        is ``kafka.partitioning``.
        """
        return JobcompdEnv(
            self.workspace / name,
            bootstrap,
            topic=TOPIC,
            params="requeue_on_msg_timeout",
            extra_toml=f"max_spool_records = {max(2 * self.n, 1_000_000)}\n"
            + ('[log]\nformat = "json"\ndebug_jobcomp = true\n' if log_deliveries else ""),
            source_toml="parse_worker = true\n" if parse_worker else "",
            kafka_toml=f'partitioning = "{partitioning}"\n' if partitioning != DEFAULT_PARTITIONING else "",
            synchronous="full",  # the default: each batch read is flushed to disk with its commit
        )


@contextlib.contextmanager
def running_daemon(env: JobcompdEnv) -> Iterator[DaemonProcess]:
    """``jobcompd run`` until the block ends: SIGTERM then, or SIGKILL if it does not stop."""
    daemon = DaemonProcess(env)
    try:
        daemon.start(timeout=120)
        yield daemon
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                daemon.stop(timeout=60)


def alive(daemon: DaemonProcess) -> Callable[[], str | None]:
    def check() -> str | None:
        if daemon.proc is None or daemon.proc.poll() is None:
            return None
        return f"the daemon exited ({daemon.proc.returncode}):\n{daemon.output()[-2000:]}"

    return check


def rate(records: int, seconds: float) -> float:
    return records / seconds if seconds > 0 else float("nan")


# -- 1. throughput -------------------------------------------------------------------------------


def _median_figures(run: Run, key: str, label: str, results: list[dict[str, Any]]) -> None:
    """The median of ``results`` (the figures of runs, ``elapsed`` among them) is
    ``run.figures[key]``, with every run's rate (``rates``)."""
    median = dict(sorted(results, key=lambda one: one["elapsed"])[len(results) // 2])
    median["rates"] = [one["rate"] for one in results]
    run.figures[key] = median
    if len(results) > 1:
        times = ", ".join(f"{one['elapsed']:.2f}" for one in results)
        print(f"  {label}: median of {len(results)} runs ({times} s) = {median['rate']:,.0f} records/s")


def _in_rounds(
    run: Run, rounds: int, keys: list[str], once: Callable[[str, int], Any]
) -> dict[str, list[Any]]:
    """``once(key, i)`` for each of ``keys``, in order, in each of ``rounds`` rounds: each key's
    results. A measurement that fails is reported and left out of the rounds after."""
    results: dict[str, list[Any]] = {key: [] for key in keys}
    for i in range(rounds):
        if rounds > 1:
            print(f"  round {i + 1} of {rounds}", flush=True)
        for key in keys:
            if key not in run.failures:
                with _reported(run, key):
                    results[key].append(once(key, i))
    return results


@contextlib.contextmanager
def _reported(run: Run, name: str) -> Iterator[None]:
    """A measurement's failure recorded in ``run.failures`` and printed; the run goes on."""
    try:
        yield
    except BenchError as exc:
        run.failures[name] = str(exc)
        print(f"  FAILED: {exc}", flush=True)
    except Exception as exc:
        run.failures[name] = f"{type(exc).__name__}: {exc}"
        print(f"  FAILED: {type(exc).__name__}: {exc}", flush=True)
        traceback.print_exc()


# The default configuration's throughput and the rsyslog baseline each is a ratio to, measured in
# rounds: each of these once a round, in this order. Runs of a round are seconds apart, the
# rounds a minute: a machine whose speed drifts over minutes (some 10-20 % within a session here)
# then slows or speeds each pair alike, which runs measured minutes apart it does not.
ROUNDS = ("rsyslog", "replay", "rsyslog-run", "daemon")
PAIRED = {"replay": "rsyslog", "daemon": "rsyslog-run"}  # shipper -> its baseline


def in_rounds(key: str, run: Run) -> None:
    """``key`` (of ``ROUNDS``) alone in :func:`throughput_rounds`."""
    throughput_rounds(run, [key])


def throughput_rounds(run: Run, keys: list[str]) -> None:
    """``keys`` (of ``ROUNDS``, in its order) measured ``--baseline-runs`` times in rounds; each
    one's figures the median of its runs (``rates``: every run's), and ``paired`` of a shipper
    whose baseline ran too: the ratio of its rate to the baseline's, in each round. A measurement
    that fails is reported and left out of the rounds after."""
    once: dict[str, Callable[[int], Any]] = {
        "rsyslog": functools.partial(_rsyslog_once, run, "rsyslog", False),
        "replay": functools.partial(_replay_once, run, "replay", False, DEFAULT_PARTITIONING),
        "rsyslog-run": functools.partial(_rsyslog_once, run, "rsyslog-run", True),
        "daemon": functools.partial(_daemon_once, run, "daemon", False, DEFAULT_PARTITIONING),
    }
    results = _in_rounds(run, run.args.baseline_runs, keys, lambda key, i: once[key](i))
    for key in keys:
        if key in run.failures or not results[key]:
            continue
        if key.startswith("rsyslog"):
            _rsyslog_figures(run, key, results[key])
        else:
            _median_figures(run, key, f"jobcompd {'replay' if key == 'replay' else 'run'}", results[key])
    for key, base in PAIRED.items():
        if key in run.figures and base in run.figures and key in keys and base in keys:
            paired = [one["rate"] / rate(run.n, other.elapsed)
                      for one, other in zip(results[key], results[base], strict=True)]
            run.figures[key]["paired"] = paired
            print(f"  {'replay' if key == 'replay' else 'run'} / {RSYSLOG_NAME[base]}, round by round: "
                  f"{', '.join(f'{r:.3g}' for r in paired)}; median {statistics.median(paired):.3g}")


def throughput_replay(
    run: Run, *, parse_worker: bool = False, partitioning: str = DEFAULT_PARTITIONING
) -> None:
    """``jobcompd replay`` of the N lines with a parse worker or another partitioning, once, timed
    from exec to its last delivery report (committed), as ``run`` is timed (the default
    configuration is measured in rounds: :func:`throughput_rounds`)."""
    key = "replay-worker" if parse_worker else f"replay-{partitioning}"
    run.figures[key] = _replay_once(run, key, parse_worker, partitioning, 0)


def _replay_once(run: Run, key: str, parse_worker: bool, partitioning: str, i: int) -> dict[str, Any]:
    with mock_cluster(TOPIC, run.partitions) as cluster:
        name = key if i == 0 else f"{key}-{i}"
        env = run.env(name, cluster.bootstrap, parse_worker=parse_worker, partitioning=partitioning)
        argv = [JOBCOMPD, "replay", "--json", "-q", str(run.lines_file), "-c", str(env.config)]
        trace = CounterTrace(StateView(env.db), time.time())
        stderr = env.root / "replay.stderr"
        with open(stderr, "wb") as err:
            reaped0, brokers0 = reaped_cpu_seconds(), lifetime_cpu_seconds(cluster.pid)
            ticks0 = MachineTicks.now()
            start, started_at = time.monotonic(), time.time()
            proc = spawn(argv, stdout=subprocess.PIPE, stderr=err)
            try:
                # stdout is one JSON line at exit: it cannot fill the pipe while we wait (for its
                # exit, to the moment: the trace is sampled between waits).
                threads: dict[tuple[int, str], float] = {}  # to the last sample before its exit
                while True:
                    if time.monotonic() - start > run.timeout():
                        raise BenchError(f"replay did not finish within {run.timeout():.0f} s")
                    trace.sample()
                    with contextlib.suppress(OSError):
                        threads = tree_thread_cpu_seconds(proc.pid) or threads
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.25)
                        break
                exited = time.monotonic() - start
                machine = MachineShare.between(ticks0, MachineTicks.now())
                brokers = lifetime_cpu_seconds(cluster.pid) - brokers0
                out, _ = proc.communicate()
            finally:
                terminate(proc)
        summary = json.loads(out.decode().strip().splitlines()[-1]) if out.strip() else {}
        view = StateView(env.db)
        delivered = view.counter("delivered_total")
        if delivered != run.n or proc.returncode != 0:
            raise BenchError(
                f"replay exited {proc.returncode}, delivered {delivered} of {run.n}; "
                f"summary {summary}; stderr: {stderr.read_text(errors='replace')[-1500:]}"
            )
        # Timed to the last acknowledgement (its report committed), as `run` and the issue time it;
        # rsyslog's end is its last Produce request. Closing the state and the process comes after.
        elapsed = min(exited, view.last_delivered_at() - started_at)
        cpu = CpuShare(reaped_cpu_seconds() - reaped0, brokers, run.n, elapsed, machine,
                       thread_cpu_by_name(threads))
    run.discard(env.root)
    r = rate(run.n, elapsed)
    print(
        f"  jobcompd replay{WORKER_TAG[parse_worker]}{PARTITIONING_TAG[partitioning]}: "
        f"{run.n:,} records delivered "
        f"in {elapsed:.2f} s "
        f"= {r:,.0f} records/s "
        f"(exited after {exited:.2f} s; its own summary: {summary.get('elapsed_s')} s, "
        f"delivered {summary.get('delivered'):,}; "
        f"state: delivered {delivered:,}; {trace.tenths(run.n, trace.start + elapsed)}; {cpu.text()})"
    )
    return {"rate": r, "elapsed": elapsed, "summary": summary, **cpu.figures()}


def throughput_daemon(
    run: Run, *, parse_worker: bool = False, partitioning: str = DEFAULT_PARTITIONING
) -> None:
    """The live daemon with a parse worker or another partitioning, once: N lines appended in bulk
    to its log, until the state counts N delivered (the default configuration is measured in
    rounds: :func:`throughput_rounds`)."""
    key = "daemon-worker" if parse_worker else f"daemon-{partitioning}"
    run.figures[key] = _daemon_once(run, key, parse_worker, partitioning, 0)


def _daemon_once(run: Run, key: str, parse_worker: bool, partitioning: str, i: int) -> dict[str, Any]:
    with mock_cluster(TOPIC, run.partitions) as cluster:
        name = key if i == 0 else f"{key}-{i}"
        env = run.env(name, cluster.bootstrap, parse_worker=parse_worker, partitioning=partitioning)
        state = StateView(env.db)
        assert env.log_path is not None
        with running_daemon(env) as daemon:
            assert daemon.proc is not None
            cpu0, brokers0 = lifetime_cpu_seconds(daemon.proc.pid), lifetime_cpu_seconds(cluster.pid)
            threads0 = tree_thread_cpu_seconds(daemon.proc.pid)
            ticks0 = MachineTicks.now()
            start = time.time()
            trace = CounterTrace(state, start)
            append_bulk(run.lines_file, env.log_path)
            written = time.time()
            wait_until(
                lambda: trace.sample()[1] >= run.n,
                timeout=run.timeout(),
                what="daemon: deliver every record",
                alive=alive(daemon),
                interval=0.25,
            )
            machine = MachineShare.between(ticks0, MachineTicks.now())  # (to the sample that saw the last)
            used = lifetime_cpu_seconds(daemon.proc.pid) - cpu0, lifetime_cpu_seconds(cluster.pid) - brokers0
            threads = thread_cpu_by_name(tree_thread_cpu_seconds(daemon.proc.pid), threads0)
            last = state.last_delivered_at()
            delivered = state.counter("delivered_total")
    if delivered != run.n:
        raise BenchError(f"daemon: {delivered} delivered, expected {run.n}")
    run.discard(env.root)
    elapsed = last - start
    r = rate(run.n, elapsed)
    read = trace.reached(1, run.n)
    cpu = CpuShare(*used, run.n, elapsed, machine, threads)
    print(
        f"  jobcompd run{WORKER_TAG[parse_worker]}{PARTITIONING_TAG[partitioning]}:    "
        f"{run.n:,} records delivered "
        f"in {elapsed:.2f} s "
        f"= {r:,.0f} records/s "
        f"(file written in {written - start:.2f} s; every line read and spooled after "
        f"{(read or last) - start:.1f} s; {trace.tenths(run.n, last)}; {cpu.text()})"
    )
    return {"rate": r, "elapsed": elapsed, **cpu.figures()}


def baseline_kcat(run: Run) -> None:
    """kcat -P -l on the same file, ``--baseline-runs`` times (median): one message per line, no parsing."""
    if run.baselines_unavailable:
        raise BenchError(f"skipped: {run.baselines_unavailable}")
    times = []
    for _ in range(run.args.baseline_runs):
        with mock_cluster(TOPIC, run.partitions) as cluster:
            result = baselines.run_kcat(run.lines_file, cluster, TOPIC, run.partitions, timeout=run.timeout())
        if result.stored != run.n:
            raise BenchError(f"kcat: the topic holds {result.stored} messages, expected {run.n}")
        times.append(result.elapsed)
    elapsed = statistics.median(times)
    r = rate(run.n, elapsed)
    run.figures["kcat"] = {"rate": r, "elapsed": elapsed}
    print(
        f"  kcat -P -l:      {run.n:,} lines delivered in {elapsed:.2f} s = {r:,.0f} records/s "
        f"(median of {len(times)} runs: {', '.join(f'{t:.2f}' for t in times)} s)"
    )


def _rsyslog_once(run: Run, key: str, appended: bool, i: int) -> baselines.BaselineRun:
    """One run of rsyslog imfile → omkafka (its own rsyslogd and broker): the file appended while
    it runs (``appended``), else started on the whole file."""
    if run.baselines_unavailable:
        raise BenchError(f"skipped: {run.baselines_unavailable}")
    with mock_cluster(TOPIC, run.partitions) as cluster:
        result = baselines.run_rsyslog(
            run.lines_file,
            run.n,
            cluster,
            TOPIC,
            run.partitions,
            run.workspace / f"{key}-{i}",
            timeout=run.timeout(),
            appended=appended,
        )
    if result.stored != run.n:
        raise BenchError(f"{key}: the topic holds {result.stored} messages, expected {run.n}")
    run.discard(run.workspace / f"{key}-{i}")
    print(f"  rsyslog omkafka ({APPENDED[appended]}): {run.n:,} lines delivered in {result.elapsed:.2f} s "
          f"= {rate(run.n, result.elapsed):,.0f} records/s", flush=True)
    return result


APPENDED = {False: "from its start", True: "appended while it runs"}


def _rsyslog_figures(run: Run, key: str, results: list[baselines.BaselineRun]) -> None:
    """rsyslog's figures (``run.figures[key]``): the median of its runs."""
    times = [r.elapsed for r in results]
    elapsed = statistics.median(times)
    notes = "; ".join(sorted({r.note for r in results if r.note}))
    r = rate(run.n, elapsed)
    median_run = sorted(results, key=lambda one: one.elapsed)[len(results) // 2]
    cpu = median_run.cpu.figures() if median_run.cpu else {}
    rates = [rate(run.n, t) for t in times]
    run.figures[key] = {"rate": r, "elapsed": elapsed, "note": notes, "rates": rates, **cpu}
    appended = key == "rsyslog-run"
    print(
        f"  rsyslog omkafka ({APPENDED[appended]}): median {r:,.0f} records/s "
        f"(median of {len(times)} runs: {', '.join(f'{t:.2f}' for t in times)} s"
        + (f"; the median run's {median_run.cpu.text()}" if median_run.cpu else "") + ")"
        + (f"\n  {'notes' if appended else 'quirk'}: {notes}" if notes else "")
    )


def throughput_floor(run: Run) -> None:
    """confluent-kafka alone, a process of its own, sending the records of the N lines as jobcompd
    sends them — key and header, a window of unreported records, a delivery report each — timed
    from the second ``produce()`` to the last report (the lines are parsed first, and the first
    record sent alone to connect, untimed). What
    jobcompd's send side costs in the interpreter with nothing else to do: no shipper written
    on confluent-kafka that counts every record by its report goes faster, whatever it does
    besides."""
    with mock_cluster(TOPIC, run.partitions) as cluster:
        assert cluster.pid is not None
        brokers0 = lifetime_cpu_seconds(cluster.pid)  # (its share of the untimed parsing is ~0)
        done = subprocess.run(
            [sys.executable, "-m", "bench.bulk_producer", cluster.bootstrap, TOPIC, str(run.lines_file),
             DEFAULT_PARTITIONING, str(run.partitions)],
            cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=run.timeout() + 300,
        )
        brokers = lifetime_cpu_seconds(cluster.pid) - brokers0
    if done.returncode != 0:
        raise BenchError(f"throughput floor: {done.stderr.decode(errors='replace')[-500:]}")
    result = json.loads(done.stdout)
    if result["delivered"] != run.n:
        raise BenchError(f"throughput floor: {result['delivered']} of {run.n} reported delivered ({result})")
    r = rate(result["timed"], result["elapsed"])
    cpu = CpuShare(result["cpu"], brokers, result["timed"], result["elapsed"])
    sending = result.get("sending", "produce()")
    run.figures["floor"] = {"rate": r, "elapsed": result["elapsed"], "sending": sending, **cpu.figures()}
    print(f"  confluent-kafka alone: {result['timed']:,} records delivered in {result['elapsed']:.2f} s "
          f"= {r:,.0f} records/s through {sending} (the first, sent alone before to connect, not timed; "
          f"{cpu.text()})")


# -- 2. latency ----------------------------------------------------------------------------------


def write_steadily(writer: SlurmctldWriter, lines: list[bytes], per_s: int) -> list[float]:
    """Write ``lines`` one at a time, ``per_s`` a second; when each was written. A ``write()`` the
    kernel held up (a disk busy with what earlier steps wrote) is printed: the latency of its line,
    timed from before it, counts that wait too."""
    written: list[float] = []
    longest = 0.0
    start = time.time() + 0.05
    for i, line in enumerate(lines):
        delay = start + i / per_s - time.time()
        if delay > 0:
            time.sleep(delay)
        at = time.time()
        written.append(at)
        writer.write(line)
        longest = max(longest, time.time() - at)
    if longest > SLOW_WRITE_S:
        print(f"  (the writer's longest write() took {longest * 1000:.1f} ms)")
    return written


def _first_word(data: bytes) -> str:
    return data.split(b" ", 1)[0].decode(errors="replace")


class LatencyConsumer(threading.Thread):
    """Reads the topic from the start (assigned, no group) and notes when each record id arrives
    (or, with ``by_first_word``, each message by its first word: a raw line's ``JobId=N``; with
    ``by_header``, by its ``record_id`` header), and when it was produced: its CreateTime, which
    librdkafka stamps at ``produce()`` in whole milliseconds (taken at the middle of its millisecond,
    so ±0.5 ms).

    The mock answers an empty fetch only after ``fetch.wait.max.ms`` even when data arrives
    meanwhile (a real broker answers at once), so that wait is kept at 2 ms; it is part of the
    write → consumer figure.
    """

    def __init__(
        self, bootstrap: str, topic: str, partitions: int, *, by_first_word: bool = False,
        by_header: bool = False,
    ) -> None:
        super().__init__(name="latency-consumer", daemon=True)
        self.received: dict[str, float] = {}
        self.created: dict[str, float] = {}
        self._by_first_word = by_first_word
        self._by_header = by_header
        self.error: str | None = None
        self._halt = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": "jobcompd-bench-latency",
                "enable.auto.commit": False,
                "fetch.wait.max.ms": 2,
                "fetch.queue.backoff.ms": 0,
                "enable.partition.eof": False,
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])

    def run(self) -> None:
        received = self.received
        try:
            while not self._halt.is_set():
                msg = self._consumer.poll(0.05)
                if msg is None:
                    continue
                now = time.time()
                if msg.error():
                    self.error = str(msg.error())
                    continue
                key: str | bytes | None
                if self._by_first_word:
                    key = _first_word(msg.value() or b"")
                elif self._by_header:
                    key = dict(msg.headers() or ()).get("record_id")
                else:
                    key = msg.key()
                if isinstance(key, bytes):
                    key = key.decode()
                if key is not None:
                    received.setdefault(key, now)
                    kind, stamp = msg.timestamp()
                    if kind == TIMESTAMP_CREATE_TIME:
                        self.created.setdefault(key, (stamp + 0.5) / 1000)  # its millisecond's middle
        finally:
            self._consumer.close()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def _summary_ms(values: list[float]) -> dict[str, float]:
    values = sorted(v * 1000 for v in values)
    return {
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": values[-1] if values else float("nan"),
        "n": len(values),
    }


def _generation(line: bytes) -> str:
    record = parse_line(line)
    return "" if isinstance(record, ParseError) else record.generation


def _records(lines: list[bytes]) -> Iterator[tuple[str, bytes]]:
    """The record id and the JSON jobcompd sends for each of ``lines`` (generated: each is a record)."""
    encoder = Encoder(ZoneInfo("UTC"), None)
    for line in lines:
        record = parse_line(line)
        if isinstance(record, ParseError):
            raise BenchError(f"a generated line did not parse: {record.reason}")
        yield encoder.record_id(line, record), encoder.encode(record)


def latency(run: Run) -> None:
    """The latency step alone (without rsyslog's): :func:`latency_rounds`."""
    latency_rounds(run, ["latency"])


# Write → consumer in the default configuration and rsyslog's, measured in rounds as throughput
# is: rsyslog, then jobcompd, ``--latency-rounds`` times; each p99 ratio is of runs a minute apart.
LATENCY_ROUNDS = ("latency-rsyslog", "latency")


@dataclass
class LatencyLines:
    """The lines every latency run writes (a warm-up first), and which records it times."""

    lines: list[bytes]
    measured: list[str]  # the record ids of the lines timed, in order
    newer: set[str]  # the record ids of lines a slurmctld of 17.11 or later writes

    @classmethod
    def of(cls, run: Run) -> LatencyLines:
        count = int(run.args.latency_rate * run.args.latency_seconds)
        lines = mixed_lines(WARMUP_LINES + count, seed=20261124)
        rids = [rid for rid, _ in _records(lines)]
        # What a slurmctld of 17.11 or later writes is timed apart as well: a 17.02 line waited for
        # the next line before the nineteenth pass (it may start a newer record cut by a line
        # break, docs/reading.md); now only when the file ends on a page boundary.
        newer = {rid for rid, line in zip(rids, lines, strict=True) if _generation(line) != "17.02"}
        return cls(lines, rids[WARMUP_LINES:], newer)


def latency_rounds(run: Run, keys: list[str]) -> None:
    """``keys`` (of ``LATENCY_ROUNDS``, in its order) measured ``--latency-rounds`` times in
    rounds: one line at a time at ``--latency-rate`` lines/s, write → consumer, rsyslog's
    (:func:`_latency_rsyslog_once`) and jobcompd's in the default configuration; each figure the
    round with the median p99, and ``paired``: jobcompd's p99 over rsyslog's, round by round. Then,
    once each, jobcompd's runs with ``debug_jobcomp`` (write → delivery report) and by key."""
    text = LatencyLines.of(run)
    def once(key: str, i: int) -> dict[str, Any]:
        if key == "latency-rsyslog":
            return _latency_rsyslog_once(run, i)
        return _latency_default(run, i, text=text)

    results = _in_rounds(run, run.args.latency_rounds, keys, once)
    for key in keys:
        if key not in run.failures and results[key]:
            run.figures[key] = _median_round(results[key])
    lat, rsyslog = run.figures.get("latency"), run.figures.get("latency-rsyslog")
    if lat is not None and rsyslog is not None:
        lat["paired"] = {
            which: [ours[which]["p99"] / theirs["consumer"]["p99"]
                    for ours, theirs in zip(results["latency"], results["latency-rsyslog"], strict=True)]
            for which in ("consumer", "consumer_newer")
        }
        for which, label in (("consumer", "all lines"), ("consumer_newer", "lines of 17.11 on")):
            paired = lat["paired"][which]
            print(f"  p99 write → consumer over rsyslog's, {label}, round by round: "
                  f"{', '.join(f'{r:.4g}' for r in paired)}; median {statistics.median(paired):.4g}")
    if "latency" in keys and lat is not None:
        try:
            _latency_others(run, text, lat)
        except BenchError as exc:
            run.failures["latency"] = str(exc)
            print(f"  FAILED: latency: {exc}", flush=True)
            return
    if lat is not None and "dr" in lat:
        _print_latency(lat)


def _median_round(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Of rounds' figures, the round whose write → consumer p99 is the median, with every round's
    p99 (``p99s``)."""
    median = dict(sorted(results, key=lambda one: one["consumer"]["p99"])[len(results) // 2])
    median["p99s"] = [one["consumer"]["p99"] for one in results]
    return median


def _consumed(
    text: LatencyLines, written: list[float], at: dict[str, float], rids: set[str] | None = None
) -> list[float]:
    """Write → ``at`` of each measured record (of ``rids``, if given) that has a time there."""
    return [at[rid] - w for rid, w in zip(text.measured, written, strict=True)
            if rid in at and (rids is None or rid in rids)]


def _latency_default(run: Run, i: int, *, text: LatencyLines) -> dict[str, Any]:
    """jobcompd in the default configuration, write → consumer (all lines, and lines of 17.11 on),
    write → produce (the record's CreateTime) and its CPU meanwhile."""
    written, consumed_at, _, cpu, created = _latency_run(run, text.lines, logged=False, round_=i)
    consumed = _consumed(text, written, consumed_at)
    if len(consumed) != len(text.measured):
        raise BenchError(f"latency: {len(consumed)} consumed of {len(text.measured)}")
    one = {
        "count": len(text.measured), "seconds": run.args.latency_seconds,
        "rate": rate(len(written) - 1, written[-1] - written[0]),
        "consumer": _summary_ms(consumed),
        "consumer_newer": _summary_ms(_consumed(text, written, consumed_at, text.newer)),
        "cpu_pct": cpu,
        "produce": _summary_ms(_consumed(text, written, created)),
    }
    s = one["consumer"]
    print(f"  jobcompd write → consumer: p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, "
          f"max {s['max']:.1f} ms ({s['n']:,} lines at {one['rate']:,.0f} lines/s); "
          f"CPU meanwhile {cpu:.1f}% of one core", flush=True)
    return one


def _latency_others(run: Run, text: LatencyLines, figures: dict[str, Any]) -> None:
    """Into ``figures``: write → delivery report in a run with ``debug_jobcomp`` on (each report
    logged, the only way to see when it came; that logging costs CPU the default spares), and
    write → consumer with ``kafka.partitioning = "key"``."""
    written, consumed_at, delivered_at, _, _ = _latency_run(run, text.lines, logged=True)
    figures["consumer_logged"] = _summary_ms(_consumed(text, written, consumed_at))
    dr = _consumed(text, written, delivered_at)
    if len(dr) != len(text.measured):
        raise BenchError(f"latency: {len(dr)} delivery reports of {len(text.measured)}")
    figures["dr"] = _summary_ms(dr)
    written, consumed_at, _, cpu, _ = _latency_run(
        run, text.lines, logged=False, partitioning=OTHER_PARTITIONING
    )
    consumed = _consumed(text, written, consumed_at)
    if len(consumed) != len(text.measured):
        raise BenchError(f"latency: {len(consumed)} consumed of {len(text.measured)}")
    figures["consumer_other"] = _summary_ms(consumed)
    figures["consumer_other_newer"] = _summary_ms(_consumed(text, written, consumed_at, text.newer))
    figures["cpu_other_pct"] = cpu


def _print_latency(figures: dict[str, Any]) -> None:
    for label, key in (
        ("write → consumer                    ", "consumer"),
        ("write → produce (CreateTime, ±0.5 ms)", "produce"),
        ("write → consumer, debug_jobcomp on  ", "consumer_logged"),
        ("write → delivery report, the same run", "dr"),
        (f"write → consumer, by {OTHER_PARTITIONING:6s}       ", "consumer_other"),
        ("the same, lines of 17.11 and later  ", "consumer_other_newer"),
        ("write → consumer, default, 17.11 on ", "consumer_newer"),
    ):
        s = figures[key]
        print(
            f"  {label}: p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms "
            f"({s['n']:,} lines at {figures['rate']:,.0f} lines/s)"
        )
    print(f"  CPU meanwhile (default configuration): {figures['cpu_pct']:.1f}% of one core; "
          f"with kafka.partitioning = \"{OTHER_PARTITIONING}\" {figures['cpu_other_pct']:.1f}%")


def _latency_run(
    run: Run, lines: list[bytes], *, logged: bool, partitioning: str = DEFAULT_PARTITIONING, round_: int = 0
) -> tuple[list[float], dict[str, float], dict[str, float], float, dict[str, float]]:
    """Write ``lines`` one at a time (after a warm-up) to a running daemon; when each measured line
    was written, when each record reached the consumer and (``logged``) its delivery report, the
    daemon's CPU meanwhile (% of one core, from the first measured line to the last consumed), and
    when each record was produced (its CreateTime)."""
    per_s = run.args.latency_rate
    total = len(lines)
    partitions = run.args.latency_partitions
    with mock_cluster(TOPIC, partitions) as cluster:
        name = (
            "latency-logged" if logged
            else "latency" if partitioning == DEFAULT_PARTITIONING else f"latency-{partitioning}"
        ) + (f"-{round_}" if round_ else "")
        env = run.env(name, cluster.bootstrap, log_deliveries=logged, partitioning=partitioning)
        state = StateView(env.db)
        consumer = LatencyConsumer(cluster.bootstrap, TOPIC, partitions)
        consumer.start()
        try:
            with running_daemon(env) as daemon:
                assert env.log_path is not None
                writer = SlurmctldWriter(env.log_path)
                try:
                    for line in lines[:WARMUP_LINES]:  # file creation, first connections
                        writer.write(line)
                        time.sleep(0.01)
                    wait_until(
                        lambda: (
                            len(consumer.received) >= WARMUP_LINES
                            and state.counter("delivered_total") >= WARMUP_LINES
                        ),
                        timeout=60,
                        what="latency warm-up",
                        alive=alive(daemon),
                    )
                    assert daemon.proc is not None
                    cpu0, t0 = tree_cpu_seconds(daemon.proc.pid), time.monotonic()
                    written = write_steadily(writer, lines[WARMUP_LINES:], per_s)
                finally:
                    writer.close()
                wait_until(
                    lambda: len(consumer.received) >= total and state.counter("delivered_total") >= total,
                    timeout=120,
                    what="latency: every line delivered and consumed",
                    alive=alive(daemon),
                )
                cpu = 100 * (tree_cpu_seconds(daemon.proc.pid) - cpu0) / (time.monotonic() - t0)
                output = daemon.output()
                delivered_at = delivery_log_times(output) if logged else {}
                for line in [x for x in output.splitlines() if "reading held up" in x][:3]:
                    print(f"  (jobcompd, {name}: {line.strip()[:300]})")
        finally:
            consumer.stop()
    return written, dict(consumer.received), delivered_at, cpu, dict(consumer.created)


def latency_rsyslog(run: Run) -> None:
    """The rsyslog latency baseline alone: :func:`latency_rounds`."""
    latency_rounds(run, ["latency-rsyslog"])


def _latency_rsyslog_once(run: Run, i: int) -> dict[str, Any]:
    """rsyslog imfile → omkafka on the same lines at the same rate: write → a consumer receiving the
    raw line (matched by its first word, ``JobId=N``)."""
    per_s, seconds = run.args.latency_rate, run.args.latency_seconds
    count = int(per_s * seconds)
    lines = mixed_lines(WARMUP_LINES + count, seed=20261124)
    # A record over several lines would reach rsyslog as several messages: only one-line ones are timed.
    keys = [_first_word(line) if line.startswith(b"JobId=") and line.count(b"\n") == 1 else None
            for line in lines]
    partitions = run.args.latency_partitions
    workdir = run.workspace / ("latency-rsyslog" + (f"-{i}" if i else ""))
    log_path = workdir / "jobcomp.log"
    workdir.mkdir(parents=True, exist_ok=True)
    log_path.touch()
    with mock_cluster(TOPIC, partitions) as cluster:
        consumer = LatencyConsumer(cluster.bootstrap, TOPIC, partitions, by_first_word=True)
        consumer.start()
        conf = baselines.rsyslog_configured(log_path, cluster, TOPIC, workdir)
        try:
            with baselines.rsyslog_running(conf, workdir) as alive_check:
                writer = SlurmctldWriter(log_path)
                try:
                    for line in lines[:WARMUP_LINES]:
                        writer.write(line)
                        time.sleep(0.01)
                    warm = {k for k in keys[:WARMUP_LINES] if k}
                    wait_until(lambda: warm <= consumer.received.keys(), timeout=60,
                               what="rsyslog latency warm-up", alive=alive_check)
                    pid = int((workdir / "rsyslogd.pid").read_text())
                    cpu0, t0 = tree_cpu_seconds(pid), time.monotonic()
                    written = write_steadily(writer, lines[WARMUP_LINES:], per_s)
                finally:
                    writer.close()
                timed = [(k, w) for k, w in zip(keys[WARMUP_LINES:], written, strict=True) if k]
                wait_until(lambda: all(k in consumer.received for k, _ in timed), timeout=120,
                           what="rsyslog latency: every line consumed", alive=alive_check)
                cpu = 100 * (tree_cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)
        finally:
            consumer.stop()
    consumed = [consumer.received[k] - w for k, w in timed]
    one = {"consumer": _summary_ms(consumed), "count": len(consumed), "cpu_pct": cpu}
    s = one["consumer"]
    print(
        f"  rsyslog write → consumer: p50 {s['p50']:.1f} ms, p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms "
        f"({s['n']:,} of {count:,} lines timed); CPU meanwhile {cpu:.1f}% of one core", flush=True
    )
    return one


def latency_floor(run: Run) -> None:
    """librdkafka alone — a process producing the records jobcompd sends, at the same rate, as
    jobcompd configures it — produce → the same consumer: keyed by record id and partitioned by key
    (as ``kafka.partitioning = "key"`` sends them), keyed with the partition chosen as for a record
    without a key (sticky, as jobcompd sends them by default), and without a key (as the plugin and
    rsyslog do). The first is what no shipper that partitions its records by key can beat on this
    broker, whatever it does before ``produce()``: each keyed record waits the whole ``linger.ms``
    in a batch of its own partition. The second shows whether that is the key or the partitioning
    by key."""
    per_s, seconds = run.args.latency_rate, run.args.latency_seconds
    count = int(per_s * seconds)
    lines = mixed_lines(WARMUP_LINES + count, seed=20261124)
    records = run.workspace / "latency-floor.records"
    with open(records, "wb") as out:
        for rid, payload in _records(lines):
            out.write(rid.encode() + b" " + payload + b"\n")
    partitions = run.args.latency_partitions
    figures: dict[str, Any] = {}
    for mode in ("keyed", "sticky", "keyless"):
        with mock_cluster(TOPIC, partitions) as cluster:
            consumer = LatencyConsumer(cluster.bootstrap, TOPIC, partitions, by_header=True)
            consumer.start()
            try:
                done = subprocess.run(
                    [sys.executable, "-m", "bench.steady_producer", cluster.bootstrap, TOPIC, mode,
                     str(per_s), str(records), str(WARMUP_LINES), str(partitions)],
                    cwd=Path(__file__).resolve().parent.parent, capture_output=True, timeout=seconds + 180,
                )
                if done.returncode != 0:
                    raise BenchError(f"latency floor ({mode}): {done.stderr.decode(errors='replace')[-500:]}")
                sent: dict[str, float] = json.loads(done.stdout)
                wait_until(functools.partial(_all_received, consumer, sent), timeout=60,
                           what=f"latency floor ({mode}): every record consumed")
            finally:
                consumer.stop()
        figures[mode] = _summary_ms([consumer.received[rid] - at for rid, at in sent.items()])
        s = figures[mode]
        print(
            f"  librdkafka alone, {mode:7s} produce → consumer: p50 {s['p50']:.1f} ms, "
            f"p99 {s['p99']:.1f} ms, max {s['max']:.1f} ms ({s['n']:,} records at {per_s:,} a second)"
        )
    run.figures["latency-floor"] = figures


def _all_received(consumer: LatencyConsumer, sent: dict[str, float]) -> bool:
    return sent.keys() <= consumer.received.keys()


# -- 3. memory -----------------------------------------------------------------------------------


def spool_backlog(run: Run, env: JobcompdEnv, daemon: DaemonProcess, step: str) -> float:
    """Append the N lines to the daemon's log (brokers down); when all of them were spooled."""
    assert env.log_path is not None
    state = StateView(env.db)
    append_bulk(run.lines_file, env.log_path)
    return wait_until(
        lambda: state.counter("spooled_total") >= run.n,
        timeout=run.timeout(),
        what=f"{step}: spool the backlog",
        alive=alive(daemon),
    )


def memory(run: Run) -> None:
    """Peak RSS of the daemon and its parse worker while N records pile up (brokers down), then drain."""
    with mock_cluster(TOPIC, run.partitions) as cluster:
        env = run.env("memory", cluster.bootstrap)
        state = StateView(env.db)
        cluster.broker_down(-1)
        with running_daemon(env) as daemon:
            assert daemon.proc is not None
            sampler = RssSampler(daemon.proc.pid).start()
            at_start = sampler.peak_rss_kb
            try:
                start = time.time()
                backlog = spool_backlog(run, env, daemon, "memory")
                peak_backlog = sampler.peak_rss_kb
                cluster.broker_up(-1)
                up = time.time()
                drained = wait_until(
                    lambda: state.counter("delivered_total") >= run.n,
                    timeout=run.timeout(),
                    what="memory: drain the backlog",
                    alive=alive(daemon),
                )
            finally:
                sampler.stop()
            dead = state.count("deadletter")
    run.figures["memory"] = {
        "hwm_mb": sampler.hwm_kb / 1024,
        "start_mb": at_start / 1024,
        "peak_backlog_mb": peak_backlog / 1024,
        "peak_mb": sampler.peak_rss_kb / 1024,
        "spool_s": backlog - start,
        "drain_s": drained - up,
    }
    print(
        f"  peak RSS (VmHWM) {sampler.hwm_kb / 1024:.1f} MB; {at_start / 1024:.1f} MB once started, "
        f"sampled peak while the backlog built "
        f"{peak_backlog / 1024:.1f} MB, overall {sampler.peak_rss_kb / 1024:.1f} MB "
        f"(backlog of {run.n:,} spooled in {backlog - start:.1f} s with brokers down; drained in "
        f"{drained - up:.1f} s after brokers up; dead letters {dead})"
    )


# -- 4. recovery ---------------------------------------------------------------------------------


def recovery(run: Run) -> None:
    """Fill the spool with N records (brokers down), stop; brokers up, start: first delivery, empty spool."""
    with mock_cluster(TOPIC, run.partitions) as cluster:
        env = run.env("recovery", cluster.bootstrap)
        state = StateView(env.db)
        cluster.broker_down(-1)
        with running_daemon(env) as daemon:
            spool_backlog(run, env, daemon, "recovery")
            daemon.stop(timeout=60)
        spooled = state.count("spool")
        if spooled != run.n:
            raise BenchError(f"recovery: {spooled} records spooled after the stop, expected {run.n}")
        cluster.broker_up(-1)
        start = time.time()
        with running_daemon(env) as daemon:
            ready = time.time()
            assert daemon.proc is not None
            sampler = RssSampler(daemon.proc.pid).start()
            try:
                wait_until(
                    lambda: state.counter("delivered_total") > 0,
                    timeout=run.timeout(),
                    what="recovery: the first delivery",
                    alive=alive(daemon),
                    interval=0.005,
                )
                first = state.last_delivered_at()
                wait_until(
                    lambda: state.counter("delivered_total") >= run.n,
                    timeout=run.timeout(),
                    what="recovery: empty the spool",
                    alive=alive(daemon),
                )
            finally:
                sampler.stop()
            last = state.last_delivered_at()
            left = state.count("spool")
    if left:
        raise BenchError(f"recovery: {left} records still spooled")
    run.figures["recovery"] = {
        "ready_s": ready - start,
        "first_s": first - start,
        "empty_s": last - start,
        "drain_rate": rate(run.n, last - first),
        "hwm_mb": sampler.hwm_kb / 1024,
    }
    print(
        f"  restart with {run.n:,} spooled: started in {ready - start:.2f} s, first delivery after "
        f"{first - start:.2f} s, spool empty after {last - start:.1f} s "
        f"({rate(run.n, last - first):,.0f} records/s; peak RSS {sampler.hwm_kb / 1024:.1f} MB)"
    )


# -- 5. idle -------------------------------------------------------------------------------------


def idle(run: Run) -> None:
    """CPU (the run time of every thread, parse worker included) of a connected daemon, no writes."""
    seconds = run.args.idle_seconds
    sample = run.workspace / "idle-lines.log"
    with open(run.lines_file, "rb") as src:
        sample.write_bytes(b"".join(src.readline() for _ in range(1000)))
    with mock_cluster(TOPIC, run.partitions) as cluster:
        env = run.env("idle", cluster.bootstrap)
        state = StateView(env.db)
        assert env.log_path is not None
        with running_daemon(env) as daemon:
            assert daemon.proc is not None
            append_bulk(sample, env.log_path)
            wait_until(
                lambda: state.counter("delivered_total") >= 1000,
                timeout=60,
                what="idle: deliver the first lines",
                alive=alive(daemon),
            )
            time.sleep(3)
            pid = daemon.proc.pid
            # Each thread's CPU, each second: where a slow minute's time went, if one comes.
            before = first = tree_thread_cpu_seconds(pid)
            t0 = time.monotonic()
            seconds_spent: list[tuple[float, float, dict[str, float]]] = []  # (at, s, by thread)
            while (at := time.monotonic() - t0) < seconds:
                time.sleep(min(1.0, seconds - at))
                now = tree_thread_cpu_seconds(pid)
                seconds_spent.append((time.monotonic() - t0, *_spent(before, now)))
                before = now
            t1 = time.monotonic()
    total, by_thread = _spent(first, before)
    pct = 100 * total / (t1 - t0)
    run.figures["idle"] = {"pct": pct, "seconds": t1 - t0}
    print(f"  idle: {total:.3f} s of CPU in {t1 - t0:.0f} s = {pct:.3f}% of one core")
    print(f"  by thread (name/id; {pid} is the daemon's main thread): "
          + ", ".join(f"{name} {1e3 * s:.1f} ms" for name, s in _top(by_thread, 6)))
    busiest = sorted(seconds_spent, key=lambda second: -second[1])[:3]
    print("  busiest seconds: " + "; ".join(
        f"+{at:.0f} s {1e3 * s:.1f} ms ({', '.join(f'{n} {1e3 * v:.1f}' for n, v in _top(threads, 2))})"
        for at, s, threads in busiest
    ))


def _spent(
    before: dict[tuple[int, str], float], after: dict[tuple[int, str], float]
) -> tuple[float, dict[str, float]]:
    """The CPU seconds threads spent between two `tree_thread_cpu_seconds`, in all and by thread
    (its name and id: jobcompd's Python threads share one name; a thread that started meanwhile
    counts from 0, one that ended is not counted)."""
    by_thread = {
        f"{name}/{tid}": seconds - before.get((tid, name), 0.0) for (tid, name), seconds in after.items()
    }
    return sum(by_thread.values()), by_thread


def _top(by_thread: dict[str, float], count: int) -> list[tuple[str, float]]:
    return sorted(by_thread.items(), key=lambda item: -item[1])[:count]


# -- profile -------------------------------------------------------------------------------------


def profile(run: Run) -> None:
    """py-spy on replay and on the daemon, each on the first ``--profile-lines`` lines."""
    py_spy = ensure_py_spy()
    if py_spy is None:
        raise BenchError("py-spy is not installed and `pip install py-spy` failed")
    count = min(run.n, run.args.profile_lines)
    subset = run.workspace / "profile-lines.log"
    with open(run.lines_file, "rb") as src, open(subset, "wb") as dst:
        for _ in range(count):
            dst.write(src.readline())
    with mock_cluster(TOPIC, run.partitions) as cluster:
        env = run.env("profile-replay", cluster.bootstrap)
        out = run.workspace / "replay.pyspy.txt"
        start = time.monotonic()
        hotspots.record_command(
            py_spy,
            out,
            [JOBCOMPD, "replay", "--json", "-q", str(subset), "-c", str(env.config)],
            timeout=run.timeout(count),
        )
        elapsed = time.monotonic() - start
        delivered = StateView(env.db).counter("delivered_total")
        if delivered != count:
            raise BenchError(f"profiled replay delivered {delivered} of {count}")
    run.profile += hotspots.Profile.load(out).report(
        f"jobcompd replay of {count:,} lines under py-spy ({rate(count, elapsed):,.0f} records/s)"
    )
    with mock_cluster(TOPIC, run.partitions) as cluster:
        env = run.env("profile-daemon", cluster.bootstrap)
        state = StateView(env.db)
        out = run.workspace / "daemon.pyspy.txt"
        assert env.log_path is not None
        with running_daemon(env) as daemon:
            assert daemon.proc is not None
            spy = hotspots.Attached(py_spy, daemon.proc.pid, out)
            try:
                time.sleep(1.0)  # py-spy attaches
                start = time.monotonic()
                append_bulk(subset, env.log_path)
                wait_until(
                    lambda: state.counter("delivered_total") >= count,
                    timeout=run.timeout(count),
                    what="profiled daemon: deliver",
                    alive=alive(daemon),
                )
                elapsed = time.monotonic() - start
            finally:
                spy.stop()
    run.profile += hotspots.Profile.load(out).report(
        f"jobcompd run on {count:,} appended lines under py-spy ({rate(count, elapsed):,.0f} records/s)"
    )
    for line in run.profile:
        print("  " + line)


# -- the table -----------------------------------------------------------------------------------


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


RSYSLOG_NAME = {"rsyslog": "rsyslog", "rsyslog-run": "rsyslog appended"}


def rsyslog_like(f: dict[str, dict[str, Any]], key: str) -> str:
    """The rsyslog baseline measured as ``key`` is: lines appended while it runs for ``run``
    (``daemon…``), when that baseline ran; the whole file from the start otherwise."""
    return "rsyslog-run" if key.startswith("daemon") and "rsyslog-run" in f else "rsyslog"


def cpu_rows(f: dict[str, dict[str, Any]], cpus: int) -> list[tuple[str, str, str, str, str]]:
    """What bounds throughput: the CPU each shipper used a record, and the rate the machine's cores
    would allow at that CPU a record (the brokers' included) — against rsyslog's rate; and how busy
    the machine's cores were meanwhile, every process's work counted (all of them busy: the cores
    are the bound, not a wait)."""
    rows = []
    for key, who in (("replay", "`jobcompd replay`"), ("daemon", "`jobcompd run`"),
                     ("floor", "confluent-kafka alone"), ("rsyslog", "rsyslog imfile → omkafka"),
                     ("rsyslog-run", "rsyslog imfile → omkafka, the lines appended while it runs")):
        if "cpu_us" not in f.get(key, {}):
            continue
        one = f[key]
        rsyslog_key = rsyslog_like(f, key)
        rsyslog = f.get(rsyslog_key, {})
        rsyslogs = f"{RSYSLOG_NAME[rsyslog_key]}'s"
        title = (f"CPU a record, {who}: every thread and process of it, first byte → last report; "
                 "the brokers' apart")
        value = (f"{one['cpu_us']:.2f} µs ({one['cores']:.2f} cores busy); "
                 f"the brokers {one['brokers_us']:.2f} µs")
        if "machine_cores" in one:
            value += f"; the machine {one['machine_cores']:.2f} of {cpus} cores busy"
            if one["steal"] >= 0.005:
                value += f" ({100 * one['steal']:.1f} % stolen by the host)"
        if one.get("threads"):
            value += f"; {threads_text(one['threads'][:3])}"
        ceiling = 1e6 * cpus / (one["cpu_us"] + one["brokers_us"])
        against = []
        baseline = key.startswith("rsyslog")
        if not baseline and "cpu_us" in rsyslog:
            against.append(f"{one['cpu_us'] / rsyslog['cpu_us']:.3g}× {rsyslogs}")
        bound = f"at this CPU a record {cpus} cores allow at most {ceiling:,.0f} records/s"
        if "rate" in rsyslog and not baseline:
            bound += f" = {ceiling / rsyslog['rate']:.3g}× {rsyslogs} rate"
        rows.append((title, value, "—", "—", "; ".join([*against, bound])))
    return rows


def results_table(run: Run, machine: Machine, started: datetime.datetime, wall: float) -> str:
    f = run.figures
    n = f"{run.n:,}"
    rows: list[tuple[str, str, str, str, str]] = []

    def failed(name: str) -> str:
        return "failed: " + run.failures[name].splitlines()[0][:120] if name in run.failures else "not run"

    def ratios(r: float, rsyslog: str = "rsyslog", paired: list[float] | None = None) -> str:
        parts = []
        for base in ("kcat", rsyslog):
            if base in f:
                ratio = statistics.median(paired) if paired and base == rsyslog else r / f[base]["rate"]
                parts.append(f"{ratio:.3g}× {RSYSLOG_NAME.get(base, base)}")
        if paired and rsyslog in f:
            parts.append(f"the median of the rounds' {', '.join(f'{one:.3g}' for one in paired)}")
        return ", ".join(parts) or "—"

    for key, label in (
        ("replay", f"throughput `jobcompd replay`, {n} lines, exec → last delivery report"),
        ("replay-worker", f"the same with `parse_worker = true` (a parse worker process), {n} lines"),
        ("replay-key", f'the same with `kafka.partitioning = "key"`, {n} lines'),
        (
            "daemon",
            f"throughput `jobcompd run`, {n} lines appended in bulk, first byte → last delivery report",
        ),
        ("daemon-worker", f"the same with `parse_worker = true` (a parse worker process), {n} lines"),
        ("daemon-key", f'the same with `kafka.partitioning = "key"`, {n} lines'),
    ):
        rsyslog = rsyslog_like(f, key)
        goal = f"≥ {GOAL_RSYSLOG_RATIO:.1f}× {RSYSLOG_NAME[rsyslog]}"
        if key in f:
            r = f[key]["rate"]
            # A shipper measured in rounds with its baseline: the median of the rounds' ratios.
            paired = f[key].get("paired") if rsyslog == PAIRED.get(key) else None
            ratio = statistics.median(paired) if paired else r / f[rsyslog]["rate"] if rsyslog in f else None
            met = _met(ratio >= GOAL_RSYSLOG_RATIO) if ratio is not None else "—"
            value = f"{r:,.0f} records/s ({f[key]['elapsed']:.1f} s)"
            rows.append((label, value, goal, met, ratios(r, rsyslog, paired)))
        else:
            rows.append((label, failed(key), goal, "—", "—"))
    for key, label in (
        ("kcat", f"baseline `kcat -P -l`, {n} lines (raw lines, no parsing)"),
        ("rsyslog", f"baseline rsyslog imfile → omkafka, {n} lines (raw lines), exec → last Produce request"),
        ("rsyslog-run", f"baseline rsyslog imfile → omkafka, {n} lines appended in bulk while it runs, "
                        "first byte → last Produce request"),
    ):
        value = f"{f[key]['rate']:,.0f} records/s ({f[key]['elapsed']:.2f} s)" if key in f else failed(key)
        rows.append((label, value, "—", "—", "baseline"))
    sending = f.get("floor", {}).get("sending", "produce()")
    label = (f"floor: confluent-kafka alone sending the {n} records as jobcompd sends them (key, header, "
             f"a delivery report each; through {sending}), nothing else: no reading, parsing or state")
    if "floor" in f:
        r = f["floor"]["rate"]
        value = f"{r:,.0f} records/s ({f['floor']['elapsed']:.2f} s)"
        over = "; ".join(
            f"{name} {f[key]['rate'] / r:.3g}× the floor"
            for key, name in (("replay", "replay"), ("daemon", "run"))
            if key in f
        )
        against = ", ".join(part for part in (ratios(r), over) if part and part != "—")
        rows.append((label, value, "—", "—", f"floor: {against}" if against else "floor"))
    else:
        rows.append((label, failed("floor"), "—", "—", "floor"))
    rows += cpu_rows(f, machine.cpus)
    lat, lat_rsyslog = f.get("latency"), f.get("latency-rsyslog")
    rsyslog_p99 = lat_rsyslog["consumer"]["p99"] if lat_rsyslog else None
    floor = f.get("latency-floor")
    for key, label in (
        ("consumer", "write → consumer"),
        ("produce", "write → produce, jobcompd's own part (the record's CreateTime: whole ms, so ±0.5 ms)"),
        ("dr", "write → delivery report (another run, `debug_jobcomp` on to log each report)"),
        ("consumer_newer", "write → consumer, lines of Slurm 17.11 on"),
        ("consumer_other", 'write → consumer, `kafka.partitioning = "key"` (another run)'),
        ("consumer_other_newer", 'write → consumer, `"key"`, lines of Slurm 17.11 on'),
    ):
        title = (
            f"latency {label}, {run.args.latency_rate:,} lines/s for {run.args.latency_seconds} s, "
            "linger.ms=5"
        )
        # rsyslog's delivery reports cannot be seen: the like-for-like figure is write → consumer.
        to_consumer = key.startswith("consumer")
        goal = "p99 ≤ rsyslog's" if to_consumer else "—"
        if lat:
            s = lat[key]
            met = ratio = "—"
            paired = lat.get("paired", {}).get(key)
            if to_consumer and paired:  # measured in rounds with rsyslog: the median of the rounds' ratios
                middle = statistics.median(paired)
                met = _met(middle <= 1.0)
                # (four digits: p99s within a few hundredths of a millisecond differ in the fourth)
                ratio = (f"p99 {middle:.4g}× rsyslog's, the median of the rounds' "
                         f"{', '.join(f'{one:.4g}' for one in paired)}")
            elif to_consumer and rsyslog_p99 is not None:
                met, ratio = _met(s["p99"] <= rsyslog_p99), f"p99 {s['p99'] / rsyslog_p99:.3g}× rsyslog's"
            if to_consumer and floor:
                mode = FLOOR_MODE[OTHER_PARTITIONING if "other" in key else DEFAULT_PARTITIONING]
                over = f"p50 {s['p50'] / floor[mode]['p50']:.3g}×, p99 {s['p99'] / floor[mode]['p99']:.3g}×"
                ratio = ("" if ratio == "—" else ratio + "; ") + over + f" the {mode} floor's"
            value = f"p50 {s['p50']:.1f} ms / p99 {s['p99']:.1f} ms / max {s['max']:.1f} ms"
            rows.append((title, value, goal, met, ratio))
        else:
            rows.append((title, failed("latency"), goal, "—", "—"))
    for cpu_key, which in (("cpu_pct", "the latency run"), ("cpu_other_pct", 'the run by "key"')):
        title = f"CPU while shipping {run.args.latency_rate:,} lines/s ({which}, every thread)"
        if lat and cpu_key in lat:
            ratio = f"{lat[cpu_key] / lat_rsyslog['cpu_pct']:.3g}× rsyslog's" if lat_rsyslog else "—"
            rows.append((title, f"{lat[cpu_key]:.1f}% of one core", "—", "—", ratio))
        else:
            rows.append((title, failed("latency"), "—", "—", "—"))
    title = "baseline latency rsyslog imfile → omkafka, write → consumer, the same lines and rate"
    if lat_rsyslog:
        s = lat_rsyslog["consumer"]
        value = (f"p50 {s['p50']:.1f} ms / p99 {s['p99']:.1f} ms / max {s['max']:.1f} ms; "
                 f"CPU {lat_rsyslog['cpu_pct']:.1f}% of one core")
        rows.append((title, value, "—", "—", "baseline"))
    else:
        rows.append((title, failed("latency-rsyslog"), "—", "—", "baseline"))
    for mode, how in (("sticky", "keyed by record id, partitions chosen as for records without a key"
                                 " (one for twice linger.ms, then another), as jobcompd sends them"),
                      ("keyed", 'keyed by record id and partitioned by key, as `kafka.partitioning = "key"`'
                                " sends them"),
                      ("keyless", "without a key, as the plugin and rsyslog send them")):
        title = (f"floor: librdkafka alone, the same records and rate, produce → consumer, {how}")
        if floor:
            s = floor[mode]
            rows.append((title, f"p50 {s['p50']:.1f} ms / p99 {s['p99']:.1f} ms / max {s['max']:.1f} ms",
                         "—", "—", "floor"))
        else:
            rows.append((title, failed("latency-floor"), "—", "—", "floor"))
    mem = f.get("memory")
    title = f"peak RSS of the daemon (and its parse worker, if any), {n}-record backlog (brokers down, up)"
    if mem:
        rows.append(
            (
                title,
                f"{mem['hwm_mb']:.0f} MB (VmHWM; {mem['start_mb']:.0f} MB at start, "
                f"{mem['peak_backlog_mb']:.0f} MB while backlogged)",
                f"≤ {GOAL_RSS_MB:.0f} MB",
                _met(mem["hwm_mb"] <= GOAL_RSS_MB),
                "—",
            )
        )
    else:
        rows.append((title, failed("memory"), f"≤ {GOAL_RSS_MB:.0f} MB", "—", "—"))
    rec = f.get("recovery")
    title = f"recovery: restart with {n} spooled → first delivery / empty spool"
    if rec:
        rows.append(
            (
                title,
                f"{rec['first_s']:.2f} s / {rec['empty_s']:.1f} s ({rec['drain_rate']:,.0f} records/s, "
                f"peak RSS {rec['hwm_mb']:.0f} MB)",
                "—",
                "—",
                "—",
            )
        )
    else:
        rows.append((title, failed("recovery"), "—", "—", "—"))
    idle_f = f.get("idle")
    title = f"idle CPU over {run.args.idle_seconds} s, no writes"
    if idle_f:
        rows.append(
            (
                title,
                f"{idle_f['pct']:.3f}% of one core",
                f"≤ {GOAL_IDLE_PCT}%",
                _met(idle_f["pct"] <= GOAL_IDLE_PCT),
                "—",
            )
        )
    else:
        rows.append((title, failed("idle"), f"≤ {GOAL_IDLE_PCT}%", "—", "—"))

    out = [
        "| figure | jobcompd | goal | met | jobcompd / baseline |",
        "|---|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} | {e} |" for a, b, c, d, e in rows),
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M %Z')}; whole run {wall / 60:.1f} min"
        + (" (--quick)" if run.args.quick else ""),
        f"- machine: {machine.cpus} CPUs ({machine.cpu_model}), {machine.memory_gib:.1f} GiB memory, "
        f"Linux {machine.kernel}, Python {machine.python}; load average at start {machine.load_at_start}, "
        f"at end {'%.2f %.2f %.2f' % os.getloadavg()}",
        f"- software: jobcompd with librdkafka {machine.librdkafka}; kcat {machine.kcat}; "
        f"{machine.rsyslog} with omkafka",
        f"- broker: librdkafka mock cluster, 3 brokers on loopback, topic of {run.partitions} partitions "
        f"(fresh cluster per measurement); producers linger.ms=5, idempotent, acks=all",
        "- jobcompd: default configuration; its state flushed to disk right after each commit of what was "
        'read, by a thread of its own (synchronous = "full")',
    ]
    if "rsyslog" in f and f["rsyslog"].get("note"):
        out.append(f"- rsyslog: {f['rsyslog']['note']} (end taken from the broker's last Produce request)")
    if "rsyslog-run" in f and f["rsyslog-run"].get("note"):
        out.append(f"- rsyslog, the lines appended while it runs: {f['rsyslog-run']['note']}")
    return "\n".join(out)


# -- main ----------------------------------------------------------------------------------------


STEPS: dict[str, tuple[str, Callable[[Run], None]]] = {
    "replay": ("1. throughput: jobcompd replay", functools.partial(in_rounds, "replay")),
    "replay-worker": (
        "1. throughput: jobcompd replay, parse_worker = true",
        functools.partial(throughput_replay, parse_worker=True),
    ),
    "replay-key": (
        '1. throughput: jobcompd replay, kafka.partitioning = "key"',
        functools.partial(throughput_replay, partitioning="key"),
    ),
    "daemon": ("1. throughput: jobcompd run (live daemon)", functools.partial(in_rounds, "daemon")),
    "daemon-worker": (
        "1. throughput: jobcompd run, parse_worker = true",
        functools.partial(throughput_daemon, parse_worker=True),
    ),
    "daemon-key": (
        '1. throughput: jobcompd run, kafka.partitioning = "key"',
        functools.partial(throughput_daemon, partitioning="key"),
    ),
    "kcat": ("1. throughput baseline: kcat", baseline_kcat),
    "rsyslog": ("1. throughput baseline: rsyslog imfile → omkafka", functools.partial(in_rounds, "rsyslog")),
    "rsyslog-run": (
        "1. throughput baseline: rsyslog imfile → omkafka, the lines appended while it runs",
        functools.partial(in_rounds, "rsyslog-run"),
    ),
    "floor": ("1. throughput floor: confluent-kafka alone, jobcompd's records", throughput_floor),
    "latency": ("2. latency", latency),
    "latency-rsyslog": ("2. latency baseline: rsyslog imfile → omkafka", latency_rsyslog),
    "latency-floor": ("2. latency floor: librdkafka alone, keyed and not", latency_floor),
    "memory": ("3. memory at a backlog", memory),
    "recovery": ("4. recovery from a full spool", recovery),
    "idle": ("5. idle CPU", idle),
    "profile": ("profile (py-spy)", profile),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="100k lines, 10 s latency, 10 s idle, 50k profiled")
    ap.add_argument("--lines", type=int, help="N for throughput, memory and recovery (default 1,000,000)")
    ap.add_argument("--partitions", type=int, default=64, help="partitions of the throughput topics")
    ap.add_argument("--latency-rate", type=int, default=1000, help="lines/s written one at a time")
    ap.add_argument("--latency-seconds", type=int, help="default 30 (10 with --quick)")
    ap.add_argument("--latency-partitions", type=int, default=16)
    ap.add_argument(
        "--latency-rounds", type=int, default=3,
        help="rounds of rsyslog's and jobcompd's write → consumer in the default configuration (median)",
    )
    ap.add_argument("--idle-seconds", type=int, help="default 60 (10 with --quick)")
    ap.add_argument(
        "--profile-lines", type=int, help="lines replayed / tailed under py-spy (default 200,000)"
    )
    ap.add_argument("--only", help=f"comma-separated subset of: {','.join(MEASUREMENTS)}")
    ap.add_argument(
        "--baseline-runs", type=int, default=5,
        help="runs of each baseline, and of replay and run in the default configuration (median)",
    )
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--keep", action="store_true", help="keep the workspace (state, logs, profiles)")
    args = ap.parse_args(argv)
    quick = args.quick
    args.lines = args.lines or (100_000 if quick else 1_000_000)
    args.latency_seconds = args.latency_seconds or (10 if quick else 30)
    args.idle_seconds = args.idle_seconds or (10 if quick else 60)
    args.profile_lines = args.profile_lines or (50_000 if quick else 200_000)
    args.only = [s.strip() for s in args.only.split(",")] if args.only else list(MEASUREMENTS)
    unknown = set(args.only) - set(MEASUREMENTS)
    if unknown:
        ap.error(f"unknown measurement(s): {', '.join(sorted(unknown))}")
    return args


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    started = datetime.datetime.now().astimezone()
    signal.signal(signal.SIGTERM, _interrupt)
    if os.geteuid() != 0:
        print(
            "bench: not running as root: missing Debian packages (kcat, rsyslog, rsyslog-kafka) cannot "
            "be installed, and their baselines are skipped if absent. Run `make bench` as root.",
            flush=True,
        )
    unavailable = None
    if {"kcat", "rsyslog", "rsyslog-run"} & set(args.only):
        unavailable = ensure_debian_packages()
        if unavailable:
            print(f"bench: {unavailable}", flush=True)
    machine = Machine.describe()
    workspace = Path(tempfile.mkdtemp(prefix="jobcompd-bench-"))
    try:
        lines_file = workspace / "lines.log"
        print(f"bench: generating {args.lines:,} mixed-generation lines (seed {args.seed}) ...", flush=True)
        t = time.monotonic()
        lines = mixed_lines(args.lines, seed=args.seed)
        lines_file.write_bytes(b"".join(lines))
        size = lines_file.stat().st_size
        del lines
        print(
            f"bench: {size / 1e6:.0f} MB ({size / args.lines:.0f} bytes/line) "
            f"in {time.monotonic() - t:.0f} s; workspace {workspace}",
            flush=True,
        )
        run = Run(args, workspace, lines_file, args.lines, baselines_unavailable=unavailable)
        rounds = [key for key in ROUNDS if key in args.only]
        if rounds:
            which = ", ".join(STEPS[key][0].split(": ", 1)[1] for key in rounds)
            print(f"\n== 1. throughput in rounds: {which}", flush=True)
            t = time.monotonic()
            throughput_rounds(run, rounds)
            print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
        for name in MEASUREMENTS:
            if name not in args.only or name in rounds:
                continue
            if name in LATENCY_ROUNDS:
                both = [key for key in LATENCY_ROUNDS if key in args.only]
                if name != both[0]:
                    continue  # (measured with the first, in rounds)
                which = " and ".join({"latency": "jobcompd", "latency-rsyslog": "rsyslog"}[k] for k in both)
                print(f"\n== 2. latency, {which} in rounds", flush=True)
                t = time.monotonic()
                latency_rounds(run, both)
                print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
                continue
            title, step = STEPS[name]
            print(f"\n== {title}", flush=True)
            t = time.monotonic()
            with _reported(run, name):
                step(run)
            print(f"  ({time.monotonic() - t:.0f} s)", flush=True)
        print("\n== results\n")
        print(results_table(run, machine, started, time.monotonic() - began))
        if run.profile:
            print("\n== profile hot spots\n")
            print("\n".join(run.profile))
        return 1 if run.failures else 0
    finally:
        if args.keep:
            print(f"\nbench: workspace kept in {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
