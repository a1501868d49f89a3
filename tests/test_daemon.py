"""``jobcompd run`` end to end: the daemon as a real subprocess, a real broker, real files rotated.

Every test asserts on what arrived in Kafka, record by record (record id → the plugin's JSON).
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from jobcompd import fastpath
from jobcompd.config import load_settings
from jobcompd.daemon import Daemon
from jobcompd.identity import FileIdentity, Position
from jobcompd.ingest import Ingestor, ReadAhead
from jobcompd.state import State
from jobcompd.tailer import LineBatch
from tests.brokers.mockcluster import MockCluster
from tests.brokers.readback import consume_all
from tests.jobcompd_env import (
    JOBCOMPD,
    SPREAD_BY_KEY,
    DaemonProcess,
    JobcompdEnv,
    alive,
    check_arrival,
    expected_messages,
    mounted_tmpfs,
    parse_workers,
    thread_names,
    wait_for,
)
from tests.slurmctld import SlurmctldWriter, mixed_lines, page_filler


@pytest.fixture
def kafka(mock_cluster: MockCluster) -> MockCluster:
    mock_cluster.create_topic("mycluster", partitions=8)
    return mock_cluster


@pytest.fixture
def env(kafka: MockCluster, tmp_path: Path) -> JobcompdEnv:
    return JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1")


@pytest.fixture
def daemon(env: JobcompdEnv) -> Iterator[DaemonProcess]:
    with DaemonProcess(env) as proc:
        yield proc


def assert_all_arrived(
    kafka: MockCluster,
    env: JobcompdEnv,
    lines: list[bytes],
    *,
    topic: str = "mycluster",
    allow_duplicates: bool = False,
    timeout: float = 60,
) -> int:
    """Wait until the daemon delivered every line, then check the topic record by record."""
    expected = expected_messages(lines)
    wait_for(lambda: env.delivered() >= len(expected), timeout, f"{len(expected)} deliveries")
    arrival = check_arrival(consume_all(kafka.bootstrap, topic, expected=len(expected), timeout=30), expected)
    assert not arrival.missing, f"{len(arrival.missing)} missing"
    assert not arrival.unexpected and not arrival.wrong_payload and not arrival.bad_header
    if not allow_duplicates:
        assert arrival.duplicates == 0
    return arrival.duplicates


def test_live_appends_single_bursts_and_partial_line(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    daemon.start()
    lines = mixed_lines(3_000, seed=21)
    assert env.log_path is not None
    with SlurmctldWriter(env.log_path) as w:
        for line in lines[:20]:  # single lines
            w.write(line)
            time.sleep(0.01)
        w.write(b"".join(lines[20:2_990]))  # a burst
        partial = lines[2_990]
        w.write(partial[:50])  # a partial line: must wait for its newline
        # Everything before it arrives (a 17.02 record last in a read waits up to 2 s: a newer
        # record cut by a line break in its directory reads the same), the partial line does not.
        wait_for(lambda: env.count("spool") + env.delivered() == 2_990, 10, "2,990 records read")
        time.sleep(0.5)
        assert env.count("spool") + env.delivered() == 2_990
        w.write(partial[50:])
        for line in lines[2_991:]:
            w.write(line)
    assert_all_arrived(kafka, env, lines)
    assert daemon.stop() == 0
    assert "stopped" in daemon.output()


def test_logrotate_create_mode_with_late_writes_to_old_file(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    daemon.start()
    lines = mixed_lines(900, seed=22)
    log = env.log_path
    assert log is not None
    with SlurmctldWriter(log) as w:
        w.write(b"".join(lines[:300]))
        time.sleep(0.3)
        os.rename(log, f"{log}.1")  # logrotate create: rename, new file at the path
        log.touch(mode=0o644)
        w.write(b"".join(lines[300:400]))  # slurmctld still writes to the old fd …
        time.sleep(0.3)
        w.reopen()  # … until `scontrol reconfigure` (postrotate)
        w.write(b"".join(lines[400:900]))
    assert_all_arrived(kafka, env, lines)
    # delaycompress then compresses .1 at the next rotation: nothing is read twice.
    with open(f"{log}.1", "rb") as src, gzip.open(f"{log}.2.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.unlink(f"{log}.1")
    time.sleep(1)
    assert_all_arrived(kafka, env, lines)


def test_copytruncate(kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess) -> None:
    daemon.start()
    lines = mixed_lines(600, seed=23)
    log = env.log_path
    assert log is not None
    with SlurmctldWriter(log) as w:
        w.write(b"".join(lines[:300]))
        wait_for(lambda: env.count("spool") + env.delivered() >= 300, 30, "first 300")
        shutil.copyfile(log, f"{log}.1")  # copytruncate: copy, then truncate in place
        os.truncate(log, 0)
        w.write(b"".join(lines[300:]))  # O_APPEND: lands at the new end
    assert_all_arrived(kafka, env, lines)
    assert "truncat" in daemon.output().lower()


def test_records_met_again_in_a_new_file_are_not_sent_again(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    """An old log put back under the log's name after a rotation, one new record written before
    it: a new file to the reader, whose old records are known already. Its lines come a few at a
    time, the case where records are produced before their batch is committed
    (``Sender.send_early``): only the new record is sent."""
    lines = mixed_lines(41, seed=31)
    old, new = lines[:40], lines[40]
    log = env.log_path
    assert log is not None
    daemon.start()
    with SlurmctldWriter(log) as w:
        for line in old:
            w.write(line)
            time.sleep(0.01)
        wait_for(lambda: env.delivered() >= len(old), 30, "the old records")
        os.rename(log, f"{log}.1")
        w.reopen()
        for line in [new, *old]:
            w.write(line)
            time.sleep(0.01)
    assert_all_arrived(kafka, env, lines)
    wait_for(lambda: env.known_again() >= len(old), 30, "the old records read again")
    assert env.delivered() == len(lines)


def test_a_trickle_is_committed_a_few_reads_at_a_time(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    """Lines written one at a time, 2 ms apart: each read (a line or two) has its records sent
    at once, and the reads that come within the next 50 ms join its commit — one flush to disk
    for several reads, not one per read. The brokers are down meanwhile, so the records stay in
    the spool, one row per commit. Once they are up, each record arrives once."""
    lines = mixed_lines(100, seed=34)
    log = env.log_path
    assert log is not None
    daemon.start()
    for broker_id in kafka.broker_ids:
        kafka.broker_down(broker_id)
    with SlurmctldWriter(log) as w:
        start = time.monotonic()
        for i, line in enumerate(lines):  # on a schedule: a late write does not delay the rest
            time.sleep(max(0.0, start + i * 0.002 - time.monotonic()))
            w.write(line)
    wait_for(lambda: env.count("spool") == len(lines), 30, "every record spooled")
    commits = env.spool_rows()
    assert commits <= len(lines) // 2, commits  # ~4 (50 ms of lines each); ~85 one per read
    for broker_id in kafka.broker_ids:
        kafka.broker_up(broker_id)
    assert_all_arrived(kafka, env, lines)


def test_a_trickles_records_acknowledged_before_their_commit_are_never_spooled(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    """Lines written one at a time, 5 ms apart, Kafka up: the records Kafka acknowledged while
    their reads gathered (``Daemon._early_acked``) are committed as delivered, and never get a
    place in the spool (the spool's seqs count those that did); each record arrives once, and
    each counts once as delivered."""
    lines = mixed_lines(200, seed=36)
    log = env.log_path
    assert log is not None
    daemon.start()
    with SlurmctldWriter(log) as w:
        start = time.monotonic()
        for i, line in enumerate(lines):
            time.sleep(max(0.0, start + i * 0.005 - time.monotonic()))
            w.write(line)
    assert_all_arrived(kafka, env, lines)
    wait_for(lambda: env.delivered() == len(lines), 30, "every record counted delivered")
    spooled = env._number("SELECT value FROM meta WHERE key = 'last_seq'")
    assert spooled < len(lines) // 2, spooled  # ~30: those sent in the last ms of a gathering
    assert env.count("spool") == 0 and env.delivered() == len(lines)


def test_a_reader_held_up_by_its_state_says_so(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    """Another process holds the state's write lock for a while (as a `deadletter retry` or a
    `replay` beside the daemon can): the commit of the next lines waits for it, the daemon logs
    that reading was held up and for how long, and the lines arrive once the lock is let go."""
    lines = mixed_lines(20, seed=35)
    log = env.log_path
    assert log is not None
    daemon.start()
    with SlurmctldWriter(log) as w:
        w.write(b"".join(lines[:10]))
        assert_all_arrived(kafka, env, lines[:10])
        other = sqlite3.connect(env.db, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            w.write(b"".join(lines[10:]))
            time.sleep(1.0)
            other.execute("ROLLBACK")
        finally:
            other.close()
    daemon.wait_log("reading held up", timeout=10)
    held = [x for x in daemon.output().splitlines() if "reading held up" in x][-1]
    seconds, commit_s = (float(held.split(f" {key}=")[1].split()[0]) for key in ("seconds", "commit_s"))
    assert 0.5 < commit_s <= seconds < 5, held  # the lock's second, give or take the reaction
    assert_all_arrived(kafka, env, lines)


def test_rotation_while_stopped(kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess) -> None:
    lines = mixed_lines(1_000, seed=24)
    log = env.log_path
    assert log is not None
    daemon.start()
    with SlurmctldWriter(log) as w:
        w.write(b"".join(lines[:200]))
        wait_for(lambda: env.delivered() >= 200, 30, "first 200")
        assert daemon.stop() == 0
        w.write(b"".join(lines[200:500]))  # written while jobcompd is stopped …
        os.rename(log, f"{log}.1")  # … then rotated …
        w.reopen()
        w.write(b"".join(lines[500:800]))  # … and more in the new file
        os.rename(f"{log}.1", f"{log}.2")  # rotated again, and compressed
        with open(f"{log}.2", "rb") as src, gzip.open(f"{log}.2.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        os.unlink(f"{log}.2")
        os.rename(log, f"{log}.1")
        w.reopen()
        w.write(b"".join(lines[800:]))
    daemon.start()
    assert_all_arrived(kafka, env, lines)


def test_sticky_partitioning_keeps_a_burst_together_and_moves_a_trickle_on(
    kafka: MockCluster, tmp_path: Path
) -> None:
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1", kafka_toml='partitioning = "sticky"\n')
    lines = mixed_lines(1_030, seed=41)
    assert env.log_path is not None
    with DaemonProcess(env) as proc:
        proc.start()
        proc.wait_log("sticky partitioning: partitions looked up")
        with SlurmctldWriter(env.log_path) as w:
            w.write(b"".join(lines[:1_000]))  # a burst
            wait_for(lambda: env.delivered() >= 1_000, 60, "the burst delivered")
            for line in lines[1_000:]:  # a trickle, slower than a partition's time (twice linger.ms)
                w.write(line)
                time.sleep(0.03)
        assert_all_arrived(kafka, env, lines)
        assert proc.stop() == 0
    partition = {m.key().decode(): m.partition() for m in consume_all(kafka.bootstrap, "mycluster", expected=1_030)}
    burst = {partition[rid] for rid in expected_messages(lines[:1_000])}
    trickle = {partition[rid] for rid in expected_messages(lines[1_000:])}
    # By their keys, 1,000 records would be on all 8 partitions; a batch read goes to one (a burst
    # read while it is written comes in a few).
    assert len(burst) <= 4, burst
    assert len(trickle) > 1, trickle


@pytest.mark.parametrize("parse_worker", ["true", "false", "auto"])
def test_backlog_and_trickle_arrive_exactly_once(kafka: MockCluster, tmp_path: Path, parse_worker: str) -> None:
    # "auto" (the default): a worker process where the compiled reader is not in use, else a thread;
    # with the default synchronous = "full" too (the write-ahead log flushed on a thread of its own).
    source = "" if parse_worker == "auto" else f"parse_worker = {parse_worker}\n"
    synchronous = "full" if parse_worker == "auto" else "normal"
    env = JobcompdEnv(
        tmp_path, kafka.bootstrap, params="poll_interval=1", source_toml=source, synchronous=synchronous,
        kafka_toml=SPREAD_BY_KEY,
    )
    wanted = parse_worker == "true" or (parse_worker == "auto" and fastpath.PARSER != "compiled")
    parsing = "worker process" if wanted else "thread" if parse_worker == "auto" else "in place"
    lines = mixed_lines(25_050, seed=31)
    log = env.log_path
    assert log is not None
    log.write_bytes(b"".join(lines[:25_000]) + b"not a record\n")  # a backlog: parsed in the child
    with DaemonProcess(env) as proc:
        proc.start()
        with SlurmctldWriter(log) as w:
            for line in lines[25_000:]:  # a trickle: parsed in-process
                w.write(line)
                time.sleep(0.01)
        assert_all_arrived(kafka, env, lines)
        children = parse_workers(proc.proc.pid)
        assert bool(children) is wanted, children
        # Its threads are named in the OS (jobcompd.threads), as librdkafka's are: top -H says
        # which one is busy.
        names = thread_names(proc.proc.pid)
        assert "sender" in names, names
        assert {
            "parse": parsing == "thread", "worker-in": wanted, "worker-out": wanted,
            "flush": synchronous == "full",  # (the write-ahead log flushed on a thread of its own)
        } == {name: name in names for name in ("parse", "worker-in", "worker-out", "flush")}, names
        assert proc.stop() == 0
        assert f"parsing={parsing}" in proc.output() or f"parsing='{parsing}'" in proc.output()
    with closing(sqlite3.connect(env.db)) as db:
        assert db.execute("SELECT line_no, raw FROM quarantine").fetchall() == [(25_001, b"not a record\n")]
    assert all(not alive(p) for p in children)


def test_a_backlog_stopped_and_started_again_arrives_exactly_once(mock_cluster: MockCluster, tmp_path: Path) -> None:
    """A backlog's batches are sent as soon as they are parsed, and committed once Kafka
    acknowledged them: a stop (SIGTERM) while some are sent and not committed commits them first,
    so that the next start sends none of them again. Nothing is lost, nothing is sent twice."""
    kafka = mock_cluster
    kafka.create_topic("mycluster", partitions=32)  # (the mock keeps about 5 MB a partition)
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1", kafka_toml=SPREAD_BY_KEY)
    lines = mixed_lines(120_000, seed=47)
    log = env.log_path
    assert log is not None
    rng = random.Random(4747)
    with DaemonProcess(env) as proc:
        for trial in range(6):
            with log.open("ab") as f:  # (the backlog grows while the daemon is stopped)
                f.write(b"".join(lines[trial * 20_000 : (trial + 1) * 20_000]))
            proc.start()
            time.sleep(rng.uniform(0.05, 0.2))
            assert proc.stop() == 0
            print(f"stop {trial}: {env.delivered()} delivered")
        proc.start()
        assert_all_arrived(kafka, env, lines)
        assert proc.stop() == 0
    with closing(sqlite3.connect(env.db)) as db:
        spooled = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
        assert db.execute("SELECT count(*) FROM spool").fetchone() == (0,)
    print(f"{spooled} of {len(expected_messages(lines))} records spooled; the others acknowledged before their commit")


def test_kill_9_while_appending(kafka: MockCluster, tmp_path: Path) -> None:
    # The default synchronous = "full": a commit is flushed by a thread of its own after it, and a
    # crash between the two loses nothing (the write-ahead log is written, the kernel holds it).
    env = JobcompdEnv(
        tmp_path, kafka.bootstrap, params="poll_interval=1", synchronous="full", kafka_toml=SPREAD_BY_KEY
    )
    trials = 20
    rng = random.Random(424242)
    lines = mixed_lines(12_000, seed=25)
    log = env.log_path
    assert log is not None
    stop = threading.Event()

    def append() -> None:
        with SlurmctldWriter(log) as w:
            for i in range(0, len(lines), 20):
                if stop.is_set():
                    return
                w.write(b"".join(lines[i : i + 20]))
                time.sleep(0.004)

    writer = threading.Thread(target=append)
    with DaemonProcess(env) as proc:
        writer.start()
        try:
            for trial in range(trials):
                proc.start(wait_ready=False)
                time.sleep(rng.uniform(0.2, 1.2))
                at = env.delivered()
                proc.kill9()
                print(f"trial {trial}: kill -9 with {at} delivered")
        finally:
            writer.join()
        proc.start()
        dups = assert_all_arrived(kafka, env, lines, allow_duplicates=True, timeout=120)
        assert proc.stop() == 0
    print(
        f"kill -9 x{trials} while appending: nothing lost, {dups} duplicate(s) (each carries its record id)"
    )


def test_sighup_topic_properties_and_broken_config(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    kafka.create_topic("second", partitions=4)
    env.kafka_toml = 'partitioning = "key"\n'
    env.write_config()
    daemon.start()
    lines = mixed_lines(900, seed=26)
    log = env.log_path
    assert log is not None
    with SlurmctldWriter(log) as w:
        w.write(b"".join(lines[:300]))
        assert_all_arrived(kafka, env, lines[:300])

        env.topic = "second"  # params (topic) and the partitioning apply at once
        env.kafka_toml = ""  # the default: "sticky"
        env.write_config()
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("configuration reloaded")
        daemon.wait_log("sticky partitioning: partitions looked up")
        w.write(b"".join(lines[300:500]))
        assert_all_arrived(kafka, env, lines[300:500], topic="second")
        # By their keys, 200 records would be on all 4 partitions; a batch read goes to one.
        partitions = {m.partition() for m in consume_all(kafka.bootstrap, "second", expected=200)}
        assert len(partitions) < 4, partitions

        env.properties = {"linger.ms": "50", "batch.num.messages": "500"}  # producer rebuilt
        env.write_config()
        daemon.signal(signal.SIGHUP)
        w.write(b"".join(lines[500:700]))
        daemon.wait_log("rebuilding producer")
        wait_for(lambda: env.delivered() >= 700, 60, "700 deliveries")

        good = env.config.read_text()
        env.config.write_text(good.replace("[kafka]", "[kafka]\nbogus_key = 1"))
        daemon.signal(signal.SIGHUP)
        daemon.wait_log("reload refused")
        w.write(b"".join(lines[700:]))  # the old configuration keeps running
        wait_for(lambda: env.delivered() >= 900, 60, "900 deliveries")
    assert "bogus_key" in daemon.output()
    assert daemon.proc is not None and daemon.proc.poll() is None
    first = check_arrival(
        consume_all(kafka.bootstrap, "mycluster", expected=300, timeout=10), expected_messages(lines[:300])
    )
    second = check_arrival(
        consume_all(kafka.bootstrap, "second", expected=600, timeout=30), expected_messages(lines[300:])
    )
    assert first.exactly_once and second.exactly_once
    assert daemon.stop() == 0


def test_broker_down_15s_while_tailing(kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess) -> None:
    daemon.start()
    lines = mixed_lines(2_000, seed=27)
    log = env.log_path
    assert log is not None
    with SlurmctldWriter(log) as w:
        w.write(b"".join(lines[:500]))
        wait_for(lambda: env.delivered() >= 500, 30, "first 500")
        for broker_id in kafka.broker_ids:
            kafka.broker_down(broker_id)
        for i in range(500, 1_500, 50):  # jobs keep finishing during the outage
            w.write(b"".join(lines[i : i + 50]))
            time.sleep(0.5)
        time.sleep(5)  # past librdkafka's longest reconnect backoff (10 s) in all
        assert env.delivered() < 1_500  # nothing could be delivered …
        assert env.count("spool") > 0  # … so it is held durably
        for broker_id in kafka.broker_ids:
            kafka.broker_up(broker_id)
        w.write(b"".join(lines[1_500:]))
    dups = assert_all_arrived(kafka, env, lines, allow_duplicates=True, timeout=120)
    # Duplicates here can only be librdkafka protocol retries of requests in flight when the
    # brokers went away (Kafka de-duplicates those; the mock cluster does not).
    print(f"broker down 15 s: nothing lost, {dups} duplicate(s) from in-flight retries")


def test_disk_full_and_read_only_state(kafka: MockCluster, tmp_path: Path) -> None:
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1")
    with mounted_tmpfs(env.state_dir, "16m", mode="0700", required=True):
        lines = mixed_lines(3_000, seed=28)
        log = env.log_path
        assert log is not None
        with DaemonProcess(env) as daemon:
            daemon.start()
            with SlurmctldWriter(log) as w:
                w.write(b"".join(lines[:200]))
                wait_for(lambda: env.delivered() >= 200, 30, "first 200")
                for broker_id in kafka.broker_ids:  # records pile up in the spool …
                    kafka.broker_down(broker_id)
                filler = env.state_dir / "filler"
                subprocess.run(
                    ["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True
                )  # … on a disk that is now full
                w.write(b"".join(lines[200:3_000]))
                daemon.wait_log("cannot write the state", timeout=30)
                # Monitoring says so, with the reason, while the daemon cannot commit.
                checked = env.run("status", "--json")
                problems = [p["problem"] for p in json.loads(checked.stdout)["problems"]]
                assert checked.returncode == 2, problems
                assert any("cannot write its state" in p and "full" in p for p in problems), problems
                filler.unlink()
                for broker_id in kafka.broker_ids:
                    kafka.broker_up(broker_id)
                daemon.wait_log("state writable again", timeout=60)
                assert_all_arrived(kafka, env, lines, allow_duplicates=True, timeout=120)

            assert daemon.stop() == 0
            # A read-only state at start: refused with a clear error; the log keeps the lines.
            subprocess.run(["mount", "-o", "remount,ro", str(env.state_dir)], check=True)
            more = mixed_lines(3_100, seed=28)[3_000:]
            with SlurmctldWriter(log) as w:
                w.write(b"".join(more))
            refused = env.run("run", timeout=60)
            assert refused.returncode == 2, refused.stderr[-2000:]
            assert "read-only" in (refused.stdout + refused.stderr).lower()
            subprocess.run(["mount", "-o", "remount,rw", str(env.state_dir)], check=True)
            daemon.start()
            assert_all_arrived(kafka, env, lines + more, allow_duplicates=True, timeout=120)
            assert daemon.stop() == 0


def test_a_trickle_read_while_the_state_cannot_be_written_arrives_once(kafka: MockCluster, tmp_path: Path) -> None:
    """Lines written one at a time, so their records are produced before their commit
    (``Sender.send_early``), while the state's disk is full: a commit fails and is tried again,
    reading pauses; once there is space again every record arrives, none twice."""
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1")
    with mounted_tmpfs(env.state_dir, "16m", mode="0700", required=True):
        lines = mixed_lines(600, seed=33)
        log = env.log_path
        assert log is not None
        with DaemonProcess(env) as daemon, SlurmctldWriter(log) as w:
            daemon.start()
            for line in lines[:20]:
                w.write(line)
                time.sleep(0.01)
            wait_for(lambda: env.delivered() >= 20, 30, "the first 20")
            filler = env.state_dir / "filler"
            subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
            written = 20
            while "cannot write the state" not in daemon.output():
                assert written < 500, "the state took every line on a full disk"
                w.write(lines[written])  # until a commit needs space the disk no longer has
                written += 1
                time.sleep(0.01)
            filler.unlink()
            daemon.wait_log("state writable again", timeout=60)
            for line in lines[written:]:
                w.write(line)
            assert_all_arrived(kafka, env, lines)
            assert daemon.stop() == 0


def test_status_exit_codes(kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess) -> None:
    not_yet = env.run("status")
    assert not_yet.returncode == 2 and "not running" in not_yet.stdout
    daemon.start()
    lines = mixed_lines(100, seed=29) + [b"garbage\n"]
    assert env.log_path is not None
    with SlurmctldWriter(env.log_path) as w:
        w.write(b"".join(lines))
    assert_all_arrived(kafka, env, lines[:-1])
    wait_for(lambda: env.count("quarantine") == 1, 10, "the quarantined line")
    shown = env.run("status", "--json")
    import json

    doc = json.loads(shown.stdout)
    assert doc["daemon_pid"] == daemon.proc.pid  # type: ignore[union-attr]
    assert doc["spool_depth"] == 0 and doc["lag_bytes"] == 0 and doc["lag_lines"] == 0
    assert doc["quarantined"] == 1 and doc["delivered_total"] == 100
    assert shown.returncode == 1 and doc["status"] == "WARNING"  # the quarantined line
    assert daemon.stop() == 0


def test_daemon_mode_with_pidfile(kafka: MockCluster, env: JobcompdEnv, tmp_path: Path) -> None:
    pidfile = tmp_path / "jobcompd.pid"
    pidfile.write_text("999999\n")  # stale: no such process
    started = subprocess.run(
        [JOBCOMPD, "run", "-c", str(env.config), "--daemon", "--pidfile", str(pidfile)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert started.returncode == 0, started.stderr
    def written() -> str:  # the pid file is created, then written: it can be read empty
        text = pidfile.read_text().strip() if pidfile.exists() else ""
        return text if text.isdigit() and text != "999999" else ""

    wait_for(lambda: bool(written()), 10, "pid file")
    pid = int(written())
    try:
        again = subprocess.run(
            [JOBCOMPD, "run", "-c", str(env.config), "--daemon", "--pidfile", str(pidfile)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert again.returncode == 2 and "already running" in again.stderr
        lines = mixed_lines(50, seed=30)
        assert env.log_path is not None
        with SlurmctldWriter(env.log_path) as w:
            w.write(b"".join(lines))
        assert_all_arrived(kafka, env, lines)
        assert os.readlink(f"/proc/{pid}/cwd") == "/"
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not alive(pid), 30, "the daemon to exit")
    assert not pidfile.exists()


def test_daemon_mode_refuses_before_detaching_with_the_reason(env: JobcompdEnv, tmp_path: Path) -> None:
    pidfile = tmp_path / "jobcompd.pid"

    def start() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [JOBCOMPD, "run", "-c", str(env.config), "--daemon", "--pidfile", str(pidfile)],
            capture_output=True, text=True, timeout=30,
        )

    env.state_dir.write_text("")  # a file where the state directory should be
    refused = start()
    assert refused.returncode == 2 and f"cannot use the state directory {env.state_dir}" in refused.stderr
    assert not pidfile.exists()

    env.state_dir.unlink()
    assert env.log_path is not None
    env.log_path.mkdir()
    refused = start()
    assert refused.returncode == 2 and "is a directory, not the log file" in refused.stderr
    assert not pidfile.exists()


def test_a_log_that_cannot_be_read_is_an_error_and_status_critical(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    assert env.log_path is not None
    env.log_path.mkdir()  # e.g. JobCompLoc pointing at a directory
    daemon.start()
    daemon.wait_log("cannot read the log file")
    assert "is a directory, not the log file" in daemon.output()

    def critical() -> bool:
        checked = env.run("status")
        return checked.returncode == 2 and "cannot read the log" in checked.stdout

    wait_for(critical, 20, "status CRITICAL for the unreadable log")
    env.log_path.rmdir()
    lines = mixed_lines(30, seed=31)
    with SlurmctldWriter(env.log_path) as w:
        w.write(b"".join(lines))
    assert_all_arrived(kafka, env, lines)
    # Said once it is gone: either the tailer saw the path empty for a moment, or the file at once.
    out = daemon.output()
    assert "the log file's problem is gone" in out or "the log file can be read again" in out
    wait_for(lambda: "cannot read the log" not in env.run("status").stdout, 20, "status to clear")
    assert daemon.stop() == 0


def test_systemd_notify_ready_status_watchdog_reload_stopping(
    kafka: MockCluster, env: JobcompdEnv, tmp_path: Path
) -> None:
    """The sd_notify protocol over a real NOTIFY_SOCKET, as systemd would receive it."""
    import socket

    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(0.2)
    got: list[str] = []

    def collect(until: str, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while not any(until in m for m in got):
            if time.monotonic() > deadline:
                raise AssertionError(f"no {until!r} from the daemon; got {got}")
            try:
                got.append(sock.recv(4096).decode())
            except TimeoutError:
                pass

    proc = subprocess.Popen(
        [JOBCOMPD, "run", "-c", str(env.config)],
        env={**os.environ, "NOTIFY_SOCKET": path, "WATCHDOG_USEC": "400000"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        collect("READY=1")
        ready = next(m for m in got if "READY=1" in m)
        assert "STATUS=spool 0" in ready
        collect("WATCHDOG=1")
        assert env.log_path is not None
        with SlurmctldWriter(env.log_path) as w:
            w.write(b"".join(mixed_lines(20, seed=31)))
        collect("delivered 20")  # STATUS= carries the spool depth and deliveries
        proc.send_signal(signal.SIGHUP)
        collect("RELOADING=1")
        got.clear()
        collect("READY=1")
        proc.send_signal(signal.SIGTERM)
        collect("STOPPING=1")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sock.close()


def test_backpressure_pauses_reading_and_resumes(kafka: MockCluster, tmp_path: Path) -> None:
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1")
    env.config.write_text(
        env.config.read_text().replace(
            'synchronous = "normal"\n', 'synchronous = "normal"\nmax_spool_records = 100\n'
        )
    )
    lines = mixed_lines(1_000, seed=32)
    assert env.log_path is not None
    with DaemonProcess(env) as daemon:
        daemon.start()
        for broker_id in kafka.broker_ids:
            kafka.broker_down(broker_id)
        with SlurmctldWriter(env.log_path) as w:
            for i in range(0, len(lines), 50):
                w.write(b"".join(lines[i : i + 50]))
                time.sleep(0.05)
        daemon.wait_log("spool full: reading paused")
        time.sleep(1.5)
        held = env.count("spool")
        assert 100 <= held < 1_000  # the rest waits in the log file itself
        status = env.run("status", "--json")
        assert '"lag_lines": ' in status.stdout and '"lag_lines": 0' not in status.stdout
        for broker_id in kafka.broker_ids:
            kafka.broker_up(broker_id)
        daemon.wait_log("reading resumed", timeout=60)
        assert_all_arrived(kafka, env, lines, allow_duplicates=True, timeout=120)
        assert daemon.stop() == 0


def test_a_file_met_again_while_its_batch_is_held_resumes_after_that_batch(tmp_path: Path) -> None:
    # The daemon reads batch n+1 while batch n is being committed. If the tailer meets a file again
    # meanwhile (a compressed copy of a rotated log, say) and asks where it stands, the answer is
    # the end of the batch held in memory, not the committed position before it.
    env = JobcompdEnv(tmp_path, "127.0.0.1:9")  # no broker: nothing is sent
    daemon = Daemon(load_settings(env.config))
    with State.open(env.state_dir, synchronous="normal") as state:
        daemon._state = state
        identity = FileIdentity("fp-log", dev=1, inode=2)
        state.commit_batch([], position=Position(identity.key, "/log", "fp-log", 100, 10))
        held = LineBatch(
            identity=identity,
            path="/log",
            lines=[b"a\n", b"b\n"],
            offsets=[100, 102],
            first_line_no=11,
            end_offset=104,
            end_line_no=12,
        )
        daemon._ahead = ReadAhead(Ingestor.configured(state, daemon.settings.source, None), state)
        daemon._add(daemon._ahead, held)

        at = daemon._lookup("fp-log")
        assert at is not None and (at.offset, at.line_no, at.path) == (104, 12, "/log")
        assert daemon._lookup("fp-other") is None

        daemon._ahead.clear()  # committed (or given up): the state answers again
        at = daemon._lookup("fp-log")
        assert at is not None and (at.offset, at.line_no) == (100, 10)


REAL_LOG = Path(__file__).parent / "data" / "real-plugin-26.05" / "jobcomp-filetxt.log"
_GOOD = mixed_lines(1, seed=40)[0]
POISON = [
    _GOOD.replace(b"JobId=1000 ", b"JobId=18446744073709551616 "),  # crashed the encoder
    _GOOD.replace(b"JobId=1000 ", b"JobId=9223372036854775808 "),  # stalled the commit
    re.sub(rb"ProcCnt=\d+", b"ProcCnt=99999999999999999999999", _GOOD),
    b"JobId=" + b"9" * 5000 + b" UserId=a(1) GroupId=b(2) Name=\n",
    b"\x00\xff garbage\n",
]
# A 17.02 record whose directory took 30 s of CPU to parse: a record, read in milliseconds.
HOSTILE = (
    b"JobId=1 UserId=a(1) GroupId=b(2) Name=x JobState=A Partition=b TimeLimit=1 StartTime=Unknown "
    b"EndTime=Unknown NodeList=n NodeCnt=1 ProcCnt=1 WorkDir=" + b" A=" * 21_000 + b" x JobId=\n"
)


def test_real_records_arrive_and_poison_lines_cost_only_themselves(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    env.source_toml = "parse_worker = true\n"  # poison in the parse worker's batches too
    env.write_config()
    daemon.start()
    real = REAL_LOG.read_bytes().splitlines(keepends=True)  # 43 jobs, one of them on two lines
    good = mixed_lines(400, seed=41)
    assert env.log_path is not None
    with SlurmctldWriter(env.log_path) as w:
        # A big batch (parsed by the parse worker) with poison lines among good ones …
        w.write(b"".join(good[:150] + POISON + [HOSTILE] + good[150:300]))
        # … small ones, parsed in-process, and the real workload, its split record written in
        # two pieces a moment apart, cut on a page boundary (where a read can end between its
        # lines: a write is seen cut only there).
        for line in [*POISON, HOSTILE, *good[300:]]:
            w.write(line)
        split = next(i for i, line in enumerate(real) if not line.startswith(b"JobId="))
        head = b"".join(real[:split])
        filler = page_filler(env.log_path.stat().st_size, head)
        w.write(filler + head)
        time.sleep(0.6)
        w.write(b"".join(real[split:]))
    assert_all_arrived(kafka, env, [*good, filler, *real, HOSTILE])
    wait_for(lambda: env.count("quarantine") == 2 * len(POISON), 20, "the poison lines quarantined")
    assert daemon.proc is not None and daemon.proc.poll() is None  # still up
    checked = env.run("status")
    assert checked.returncode == 1 and "quarantined" in checked.stdout  # a warning, not a stall
    assert daemon.stop() == 0


def test_quarantine_retry_delivers_lines_an_older_parser_refused(
    kafka: MockCluster, env: JobcompdEnv, daemon: DaemonProcess
) -> None:
    from jobcompd.state import QuarantinedLine

    real = REAL_LOG.read_bytes().splitlines(keepends=True)
    split = next(i for i, line in enumerate(real) if not line.startswith(b"JobId="))
    # What an older jobcompd quarantined: a record split by a line break (both halves), a job
    # whose account holds spaces, and a line that is garbage for any parser.
    account = _GOOD.replace(b" Account=", b" Account=acct with space ", 1)
    old = [
        QuarantinedLine("old.log", 7, 700, real[split - 1], "malformed field value"),
        QuarantinedLine("old.log", 8, 800, real[split], "not a jobcomp/filetxt record"),
        QuarantinedLine("old.log", 20, 2000, account, "malformed field value"),
        QuarantinedLine("old.log", 30, 3000, b"\x1b[2Jgarbage\xff\n", "not a record"),
    ]
    assert env.log_path is not None
    env.log_path.touch()
    daemon.start()
    with State.open(env.state_dir, synchronous="normal") as state:
        state.commit_batch([], quarantined=old)
    listed = env.run("quarantine", "list")
    assert listed.returncode == 0 and listed.stdout.count("old.log:") == 4
    assert "\x1b" not in listed.stdout and "\\x1b[2Jgarbage\\xff" in listed.stdout  # shown safely
    retried = env.run("quarantine", "retry", "--all")
    assert retried.returncode == 1, retried.stderr  # the garbage line is still not a record
    assert "3 of 4 line(s) read as records now: 2 spooled" in retried.stdout
    assert_all_arrived(kafka, env, [real[split - 1], real[split], account])
    left = json.loads(env.run("quarantine", "list", "--json").stdout)
    assert [q["line_no"] for q in left] == [30]
    assert env.run("quarantine", "retry", "--all").returncode == 1  # nothing sent twice either
    purged = env.run("quarantine", "purge", str(left[0]["id"]))
    assert purged.returncode == 0 and env.count("quarantine") == 0
    checked = env.run("status")
    assert checked.returncode == 0, checked.stdout  # no quarantined line: no warning
    assert daemon.stop() == 0


def test_a_short_retention_keeps_the_known_ids_bounded(kafka: MockCluster, tmp_path: Path) -> None:
    # 0.00005 days = 4.3 s: the daemon prunes at least twice per retention period.
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1",
                      extra_toml="known_ids_days = 0.00005\n")
    lines = mixed_lines(300, seed=51)
    assert env.log_path is not None
    with DaemonProcess(env) as daemon:
        daemon.start()
        with SlurmctldWriter(env.log_path) as w:
            w.write(b"".join(lines[:200]))
            assert_all_arrived(kafka, env, lines[:200])
            wait_for(lambda: env.count("known") == 0, 30, "the known ids forgotten")
            w.write(b"".join(lines[200:]))
            wait_for(lambda: env.delivered() >= 300, 30, "300 deliveries")
            wait_for(lambda: env.count("known") == 0, 30, "the new known ids forgotten")
        shown = env.run("status")
        assert "~0 known record ids" in shown.stdout, shown.stdout
        assert daemon.stop() == 0


def test_metrics_endpoint_and_textfile_follow_the_daemon(kafka: MockCluster, tmp_path: Path) -> None:
    import socket
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    textfile = tmp_path / "jobcompd.prom"
    # librdkafka's statistics, which count the brokers up, come every 15 s by default; every
    # second here, so that the brokers' coming and going shows in the metrics within the test.
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1",
                      properties={"statistics.interval.ms": "1000"},
                      extra_toml=f'[metrics]\nlisten = "127.0.0.1:{port}"\ntextfile = "{textfile}"\n')

    def scrape(text: str | None = None) -> dict[str, float]:
        if text is None:
            text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        return {
            sample.name: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    lines = mixed_lines(120, seed=52)
    assert env.log_path is not None
    with DaemonProcess(env) as daemon:
        daemon.start()
        first = scrape()
        assert first["jobcompd_lines_read_total"] == 0 and first["jobcompd_health_ok"] == 1
        assert first["jobcompd_build_info"] == 1
        with SlurmctldWriter(env.log_path) as w:
            w.write(b"".join(lines[:100]) + b"garbage\n")
            assert_all_arrived(kafka, env, lines[:100])
            wait_for(lambda: scrape()["jobcompd_records_quarantined_total"] == 1, 10, "quarantine")
            now = scrape()
            assert now["jobcompd_lines_read_total"] == 101
            assert now["jobcompd_records_delivered_total"] == 100
            assert now["jobcompd_spool_records"] == 0 and now["jobcompd_log_lag_bytes"] == 0
            assert now["jobcompd_last_delivery_timestamp_seconds"] > time.time() - 60
            wait_for(lambda: scrape().get("jobcompd_brokers_up", 0) >= 1, 40, "brokers up")
            for broker_id in kafka.broker_ids:
                kafka.broker_down(broker_id)
            w.write(b"".join(lines[100:]))
            wait_for(lambda: scrape()["jobcompd_brokers_up"] == 0, 45, "brokers down in the metrics")
            assert scrape()["jobcompd_health_ok"] == 0
            # status reads the report the daemon writes every 5 s, so it may say so a little later.
            wait_for(lambda: "no Kafka broker reachable" in env.run("status").stdout, 10, "status")
            assert env.run("status").returncode >= 1
            for broker_id in kafka.broker_ids:
                kafka.broker_up(broker_id)
            assert_all_arrived(kafka, env, lines, allow_duplicates=True)
            wait_for(lambda: scrape()["jobcompd_health_ok"] == 1, 45, "healthy again")
        # The textfile holds the same metrics, for node_exporter.
        wait_for(lambda: textfile.exists() and
                 scrape(textfile.read_text()).get("jobcompd_records_delivered_total") == 120,
                 30, "the textfile")
        assert daemon.stop() == 0


def test_the_daemon_writes_its_report_for_the_monitoring_group(kafka: MockCluster, tmp_path: Path) -> None:
    import stat

    from jobcompd.health import read_health

    report = tmp_path / "run" / "status.json"
    report.parent.mkdir()
    env = JobcompdEnv(tmp_path, kafka.bootstrap, params="poll_interval=1",
                      extra_toml=f'[status]\nfile = "{report}"\n')
    lines = mixed_lines(50, seed=53)
    assert env.log_path is not None
    with DaemonProcess(env) as daemon:
        daemon.start()
        with SlurmctldWriter(env.log_path) as w:
            w.write(b"".join(lines))
        assert_all_arrived(kafka, env, lines)

        def reported() -> bool:
            health = read_health(env.state_dir, path=report)
            return health is not None and health.delivered_total == 50 and health.lag_bytes == 0

        wait_for(reported, 20, "the report")
        assert stat.S_IMODE(report.stat().st_mode) == 0o640  # the group may read it …
        assert stat.S_IMODE(env.state_dir.stat().st_mode) == 0o700  # … not the state
        assert daemon.stop() == 0
