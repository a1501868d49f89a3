"""``jobcompd replay`` end to end: a real jobcompd process, real brokers, checked record by record;
and a failed commit on a real state."""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import random
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import pytest

from jobcompd.config import load_settings
from jobcompd.ingest import Ingestor
from jobcompd.logfile import BATCH_LINES
from jobcompd.producer import REPLAY_WINDOW, Sender
from jobcompd.replay import Replayer
from jobcompd.state import State, StateError
from tests.brokers import Broker
from tests.brokers.mockcluster import MockCluster
from tests.brokers.readback import consume_all
from tests.jobcompd_env import (
    JOBCOMPD,
    SPREAD_BY_KEY,
    JobcompdEnv,
    check_arrival,
    expected_messages,
    summary_json,
    wait_for,
)
from tests.slurmctld import FakeJob, mixed_lines, render
from tests.test_state import slow_disk

MSG_SIZE_TOO_LARGE = 10
PRODUCE = 0


def test_replay_50k_lines_arrive_exactly_once(broker: Broker, tmp_path: Path) -> None:
    broker.create_topic("mycluster", partitions=16)
    # Big batches, parsed in a parse worker (the other replay tests run the default, which has
    # none with the compiled reader).
    env = JobcompdEnv(
        tmp_path, broker.bootstrap, source_toml="parse_worker = true\n",
        kafka_toml=SPREAD_BY_KEY if broker.kind == "mock" else "",
    )
    lines = mixed_lines(50_000, seed=11)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_json(done)
    assert summary["records"] == 50_000 and summary["delivered"] == 50_000
    expected = expected_messages(lines)
    got = consume_all(broker.bootstrap, "mycluster", expected=len(expected), timeout=60)
    arrival = check_arrival(got, expected)
    print(f"{broker.kind}: {len(got)} messages, duplicates {arrival.duplicates}")
    assert arrival.exactly_once, (
        len(arrival.missing),
        arrival.duplicates,
        arrival.wrong_payload[:3],
    )

    # Replaying the same file — and a gzip copy of it — sends nothing again.
    again = env.run("replay", "--json", str(log))
    assert again.returncode == 0 and summary_json(again)["delivered"] == 0
    gz = tmp_path / "jobcomp.log.1.gz"
    gz.write_bytes(gzip.compress(log.read_bytes()))
    copy = env.run("replay", "--json", str(gz))  # same first line: recognised, skipped unread
    assert copy.returncode == 0, copy.stderr[-2000:]
    assert summary_json(copy)["skipped_bytes"] == log.stat().st_size
    assert summary_json(copy)["delivered"] == 0
    piped = env.run("replay", "--json", "-", input=log.read_text(errors="surrogateescape"))
    assert piped.returncode == 0, piped.stderr[-2000:]  # stdin has no position: the ledger
    assert summary_json(piped)["already_known"] == 50_000  # of delivered ids stops resending
    assert summary_json(piped)["delivered"] == 0
    assert len(consume_all(broker.bootstrap, "mycluster", expected=50_001, timeout=3)) == 50_000


def test_replay_reads_bz2_and_xz_rotated_logs(mock_cluster: MockCluster, tmp_path: Path) -> None:
    mock_cluster.create_topic("mycluster", partitions=4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    lines = mixed_lines(600, seed=21)
    (tmp_path / "jobcomp.log.2.bz2").write_bytes(bz2.compress(b"".join(lines[:300])))
    (tmp_path / "jobcomp.log.1.xz").write_bytes(lzma.compress(b"".join(lines[300:])))
    done = env.run("replay", "--json", str(tmp_path / "jobcomp.log.2.bz2"), str(tmp_path / "jobcomp.log.1.xz"))
    assert done.returncode == 0, done.stderr[-3000:]
    summary = summary_json(done)
    assert (summary["records"], summary["quarantined"], summary["delivered"]) == (600, 0, 600)
    expected = expected_messages(lines)
    got = consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60)
    assert check_arrival(got, expected).exactly_once


def test_broker_outage_in_the_middle(mock_cluster: MockCluster, tmp_path: Path) -> None:
    mock_cluster.create_topic("mycluster", partitions=16)
    env = JobcompdEnv(
        tmp_path, mock_cluster.bootstrap, properties={"reconnect.backoff.max.ms": "1000"},
        kafka_toml=SPREAD_BY_KEY,
    )  # back soon after "up"
    lines = mixed_lines(50_000, seed=12)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.set_rtt(broker_id, 20)  # slow enough to be caught in the middle
    proc = env.popen("replay", "--json", str(log))
    try:
        wait_for(lambda: env.delivered() > 2_000, 60, "the first deliveries")
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.broker_down(broker_id)
        down_at = env.delivered()
        time.sleep(10)  # ten times the reconnect backoff: many failed attempts to reconnect
        during = env.delivered()
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.set_rtt(broker_id, 0)
            mock_cluster.broker_up(broker_id)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    assert down_at < 50_000, "the outage did not happen in the middle of the replay"
    summary = dict(__import__("json").loads(out.strip().splitlines()[-1]))
    print(f"delivered when brokers went down: {down_at}, after 10 s down: {during}")
    # jobcompd handed every record to librdkafka exactly once: it re-sent nothing itself.
    assert summary["produced"] == 50_000 and summary["delivered"] == 50_000
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60),
        expected,
    )
    assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload
    # librdkafka retries the requests that were in flight when the brokers went away. Kafka
    # de-duplicates them by the idempotent producer's sequence numbers; librdkafka's mock cluster
    # does not (it only does for transactional producers), so on it those retries show up as
    # duplicates — bounded by what jobcompd lets be in flight (replay's window).
    bound = REPLAY_WINDOW
    print(f"outage: {arrival.duplicates} duplicate(s) from protocol retries (bound {bound})")
    assert arrival.duplicates <= bound


@pytest.mark.parametrize("requeue", [False, True], ids=["discard-would-be", "requeue"])
def test_message_timeouts_lose_nothing(mock_cluster: MockCluster, tmp_path: Path, requeue: bool) -> None:
    mock_cluster.create_topic("mycluster", partitions=4)
    env = JobcompdEnv(
        tmp_path,
        mock_cluster.bootstrap,
        params="requeue_on_msg_timeout" if requeue else "",
        properties={"message.timeout.ms": "1500", "request.timeout.ms": "1000"},
    )
    lines = mixed_lines(2_000, seed=13)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.set_rtt(broker_id, 4000)  # every produce request outlives message.timeout.ms

    if requeue:

        def heal() -> None:
            time.sleep(6)
            for broker_id in mock_cluster.broker_ids:
                mock_cluster.set_rtt(broker_id, 0)

        healer = threading.Thread(target=heal)
        healer.start()
        done = env.run("replay", "--json", str(log))
        healer.join()
        assert done.returncode == 0, done.stderr[-3000:]
        assert env.count("spool") == 0 and env.count("deadletter") == 0
    else:
        done = env.run("replay", "--json", str(log))
        assert done.returncode == 1, done.stderr[-3000:]  # not everything delivered
        summary = summary_json(done)
        assert summary["dead_lettered"] > 0
        letters = env.dead_letters()
        assert letters and all("_MSG_TIMED_OUT" in d["reason"] for d in letters)
        assert "dead-lettered" in done.stderr  # the error is logged, as the plugin does
        # Nothing lost: every record is delivered or held as a dead letter with its reason.
        assert env.delivered() + env.count("deadletter") == len(lines)
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.set_rtt(broker_id, 0)
        assert env.run("deadletter", "retry", "--all").returncode == 0
        again = env.run("replay", "--json", str(log))
        assert again.returncode == 0, again.stderr[-3000:]
        assert env.count("deadletter") == 0 and env.count("spool") == 0
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60),
        expected,
    )
    # A timed-out message may still have been written by the broker: sent again, it is a
    # duplicate with the same record id. Nothing may be missing.
    print(f"timeouts (requeue={requeue}): duplicates {arrival.duplicates}")
    assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload


def test_oversized_message_is_dead_lettered_with_reason(mock_cluster: MockCluster, tmp_path: Path) -> None:
    mock_cluster.create_topic("mycluster", partitions=2)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, properties={"message.max.bytes": "20000"})
    lines = mixed_lines(50, seed=14)
    huge = render(FakeJob(job_id=999_999, name="n" * 30_000), "23.02", __import__("zoneinfo").ZoneInfo("UTC"))
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines[:25] + [huge] + lines[25:]))
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 1
    letters = env.dead_letters()
    assert [d["jobid"] for d in letters] == [999_999]
    assert "MSG_SIZE_TOO_LARGE" in letters[0]["reason"]
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=30),
        expected,
    )
    assert arrival.exactly_once


def test_broker_refusal_in_delivery_report_is_dead_lettered(
    mock_cluster: MockCluster, tmp_path: Path
) -> None:
    mock_cluster.create_topic("mycluster", partitions=1)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, properties={"linger.ms": "0"})
    lines = mixed_lines(20, seed=15)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    mock_cluster.push_request_errors(PRODUCE, [MSG_SIZE_TOO_LARGE])
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 1
    letters = env.dead_letters()
    assert letters and all("MSG_SIZE_TOO_LARGE" in d["reason"] for d in letters)
    assert env.delivered() + len(letters) == len(lines)  # nothing lost
    assert env.run("deadletter", "purge").returncode == 2  # refuses without ids or --all
    purged = env.run("deadletter", "purge", letters[0]["rid"])
    assert purged.returncode == 0 and "1 dead letter(s) purged" in purged.stdout
    assert len(env.dead_letters()) == len(letters) - 1


def test_kill_9_at_random_points_then_rerun_loses_nothing(mock_cluster: MockCluster, tmp_path: Path) -> None:
    trials = 20
    rng = random.Random(20261124)
    kill_after = [rng.uniform(0.05, 2.5) for _ in range(trials)]
    lines = mixed_lines(8_000, seed=16)
    expected = expected_messages(lines)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.set_rtt(broker_id, 40)  # with small batches a replay lasts a few seconds,
    for trial in range(trials):  # each trial its own topic and state, made before they run
        mock_cluster.create_topic(f"kill{trial}", partitions=4)

    def trial(number: int) -> tuple[bool, int]:
        """A replay killed after ``kill_after[number]`` s, then run again: whether the kill came
        before the end, and the duplicates the re-run sent."""
        topic = f"kill{number}"
        env = JobcompdEnv(
            tmp_path / topic,
            mock_cluster.bootstrap,
            topic=topic,
            properties={"batch.num.messages": "100"},
        )  # so kills land inside it
        proc = env.popen("replay", "--json", str(log))
        time.sleep(kill_after[number])
        at_kill = env.delivered(), env.count("spool")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        done = env.run("replay", "--json", str(log))
        assert done.returncode == 0, done.stderr[-3000:]
        arrival = check_arrival(
            consume_all(mock_cluster.bootstrap, topic, expected=len(expected), timeout=60), expected
        )
        assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload, number
        print(
            f"trial {number}: killed with {at_kill[0]} delivered, {at_kill[1]} spooled; "
            f"duplicates after re-run {arrival.duplicates}"
        )
        return proc.returncode == -signal.SIGKILL and at_kill[0] < len(lines), arrival.duplicates

    # Two trials at a time: each mostly waits for its brokers (40 ms a request).
    with ThreadPoolExecutor(max_workers=2) as pool:
        outcomes = list(pool.map(trial, range(trials)))
    mid_run = sum(in_middle for in_middle, _ in outcomes)
    total_dups = sum(dups for _, dups in outcomes)
    print(
        f"kill -9 x{trials} ({mid_run} in the middle of a run): nothing lost, "
        f"{total_dups} duplicates in total, each detectable by its record id"
    )
    assert mid_run >= trials // 2, "too few kills landed in the middle of a replay"


def test_a_replay_stopped_and_run_again_sends_each_record_once(mock_cluster: MockCluster, tmp_path: Path) -> None:
    """Replay sends a backlog's batches as soon as they are parsed, and commits them once Kafka
    acknowledged them: a stop (SIGTERM) while some are sent and not committed commits them first,
    so that the next replay sends none of them again. Nothing is lost, nothing is sent twice."""
    mock_cluster.create_topic("mycluster", partitions=64)  # (the mock keeps about 5 MB a partition)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, kafka_toml=SPREAD_BY_KEY)
    lines = mixed_lines(150_000, seed=48)
    log = tmp_path / "jobcomp.log"
    rng = random.Random(4848)
    stopped = 0
    for trial in range(5):
        with log.open("ab") as f:  # (the backlog grows between replays)
            f.write(b"".join(lines[trial * 30_000 : (trial + 1) * 30_000]))
        before = env.delivered()
        proc = env.popen("replay", "--json", str(log))
        # Stopped once a few more records were delivered, at a point of the backlog drawn.
        target = before + rng.randint(1_000, 25_000)
        while proc.poll() is None and env.delivered() < target:
            time.sleep(0.005)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
        assert proc.returncode in (0, 1), err[-3000:]
        summary = summary_json(subprocess.CompletedProcess([], 0, out, err))
        stopped += summary["interrupted"]
        print(f"stop {trial}: {summary['lines']} lines read, {summary['delivered']} delivered, "
              f"interrupted {summary['interrupted']}")
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60), expected
    )
    assert arrival.exactly_once, (len(arrival.missing), arrival.duplicates, arrival.wrong_payload[:3])
    assert stopped >= 3, "too few stops landed in the middle of a replay"
    with closing(sqlite3.connect(env.db)) as db:
        spooled = db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()[0]
    print(f"{spooled} of {len(expected)} records spooled; the others acknowledged before their commit")


def test_check_config_connect(mock_cluster: MockCluster, tmp_path: Path) -> None:
    mock_cluster.create_topic("mycluster", partitions=3)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, properties={"sasl.password": "hunter2"})
    shown = env.run("check-config")
    assert shown.returncode == 0, shown.stderr
    assert "hunter2" not in shown.stdout and "***" in shown.stdout
    ok = env.run("check-config", "--connect", "--timeout", "10")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "3 partition(s)" in ok.stdout
    missing = JobcompdEnv(tmp_path / "other", mock_cluster.bootstrap, topic="no-such-topic")
    bad = missing.run("check-config", "--connect", "--timeout", "5")
    assert bad.returncode == 1 and "FAIL topic 'no-such-topic'" in bad.stdout

    # A wrong address: one verdict naming the cause, none of librdkafka's raw log lines.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens on it once closed
    refused = JobcompdEnv(tmp_path / "refused", f"127.0.0.1:{port}").run(
        "check-config", "--connect", "--timeout", "3"
    )
    assert refused.returncode == 1
    assert f"connection refused on 127.0.0.1:{port}" in refused.stdout
    assert "%3|" not in refused.stdout + refused.stderr
    unresolved = JobcompdEnv(tmp_path / "dns", "no-such-host.invalid:9092").run(
        "check-config", "--connect", "--timeout", "3"
    )
    assert "name not resolved: no-such-host.invalid:9092" in unresolved.stdout
    assert "%3|" not in unresolved.stdout + unresolved.stderr


def test_connection_causes_from_librdkafka_lines() -> None:
    from jobcompd.preflight import cause

    assert cause(["_SSL: ssl://k1:9093/bootstrap: SSL handshake failed: certificate verify failed"]) == (
        "TLS failure: SSL handshake failed: certificate verify failed (check security.protocol and "
        "the ssl.* properties)"
    )
    assert cause(["_AUTHENTICATION: sasl_ssl://k1:9094/1: SASL authentication error: Authentication "
                  "failed during authentication due to invalid credentials with SASL mechanism "
                  "SCRAM-SHA-512"]).startswith("SASL authentication failed: ")
    assert cause(["_TRANSPORT: k1:9092/bootstrap: Connect to ipv4#10.0.0.9:9092 failed: Connection "
                  "timed out (after 3000ms in state CONNECT)"]) == (
        "no answer from 10.0.0.9:9092 (a firewall, or an address that is not reachable from here)"
    )
    assert cause(["_ALL_BROKERS_DOWN: 1/1 brokers are down"]) is None


def test_replay_refuses_bad_config_and_second_writer(mock_cluster: MockCluster, tmp_path: Path) -> None:
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, params="flush_timeout=abc")
    log = tmp_path / "x.log"
    log.write_bytes(b"".join(mixed_lines(10)))
    done = env.run("replay", str(log))
    assert done.returncode == 2 and "flush_timeout" in done.stderr
    missing = env.run("replay", str(tmp_path / "nope.log"))
    assert missing.returncode == 2

    mock_cluster.create_topic("mycluster", partitions=1)
    env = JobcompdEnv(tmp_path / "b", mock_cluster.bootstrap)
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.broker_down(broker_id)
    first = env.popen("replay", str(log))
    try:
        wait_for(lambda: (env.state_dir / "jobcompd.lock").exists(), 30, "the first replay")
        time.sleep(0.5)
        second = env.run("replay", str(log))
        assert second.returncode == 2 and "in use by another jobcompd" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        try:
            first.wait(timeout=30)
        except subprocess.TimeoutExpired:
            first.kill()
    # SIGTERM: stops, leaves what is unacknowledged in the spool, says the run is incomplete.
    assert first.returncode == 1
    assert env.count("spool") == 10


def test_full_producer_queue_is_backpressure_not_loss(mock_cluster: MockCluster, tmp_path: Path) -> None:
    """librdkafka's queue holds 50 messages here: produce() raises BufferError, nothing is dropped."""
    mock_cluster.create_topic("mycluster", partitions=4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, properties={"queue.buffering.max.messages": "50"})
    lines = mixed_lines(5_000, seed=17)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60), expected
    )
    assert arrival.exactly_once


def test_a_full_spool_pauses_reading_until_records_leave_it(mock_cluster: MockCluster, tmp_path: Path) -> None:
    """Past ``max_spool_records`` replay sends before it reads on: with brokers down it stops
    reading (the rest waits in the file), and goes on once they are back."""
    mock_cluster.create_topic("mycluster", partitions=4)
    env = JobcompdEnv(
        tmp_path, mock_cluster.bootstrap, properties={"reconnect.backoff.max.ms": "500"},
        extra_toml="max_spool_records = 3000\n", kafka_toml=SPREAD_BY_KEY,
    )
    lines = mixed_lines(20_000, seed=41)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    for broker_id in mock_cluster.broker_ids:
        mock_cluster.broker_down(broker_id)
    proc = env.popen("replay", "--json", str(log))
    try:
        wait_for(lambda: env.count("spool") >= 3_000, 60, "the spool to fill")
        held = -1
        while held != env.count("spool"):  # until reading stops
            held = env.count("spool")
            time.sleep(1.5)
        assert proc.poll() is None
        # Past the bound by what crossed it and the batches already read (two ahead of the sender).
        print(f"held {held} of {len(lines)}")
        assert 3_000 <= held <= 3_000 + 3 * BATCH_LINES < len(lines)
        for broker_id in mock_cluster.broker_ids:
            mock_cluster.broker_up(broker_id)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    summary = dict(__import__("json").loads(out.strip().splitlines()[-1]))
    assert summary["delivered"] == len(lines)
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60), expected
    )
    assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload


def test_progress_line_on_a_terminal(mock_cluster: MockCluster, tmp_path: Path) -> None:
    import os
    import pty

    mock_cluster.create_topic("mycluster", partitions=4)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(mixed_lines(20_000, seed=18)))
    main, child = pty.openpty()
    proc = subprocess.Popen(
        [JOBCOMPD, "replay", "-c", str(env.config), str(log)], stdout=subprocess.PIPE, stderr=child, text=True
    )
    os.close(child)
    shown = b""
    while True:
        try:
            chunk = os.read(main, 4096)
        except OSError:
            break
        if not chunk:
            break
        shown += chunk
    os.close(main)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    text = shown.decode(errors="replace")
    assert "rec/s" in text and "ETA" in text and "100.0%" in text
    assert "delivered:      20000" in out and "result:         complete" in out


@pytest.mark.parametrize("code", [45, 59], ids=["OUT_OF_ORDER_SEQUENCE_NUMBER", "UNKNOWN_PRODUCER_ID"])
def test_fatal_idempotence_error_rebuilds_the_producer(mock_cluster: MockCluster, tmp_path: Path,
                                                      code: int) -> None:
    """A fatal error of the idempotent producer is not the records' fault: rebuild and resend."""
    mock_cluster.create_topic("mycluster", partitions=2)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap)
    lines = mixed_lines(3_000, seed=40)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    mock_cluster.push_request_errors(PRODUCE, [code] * 3)
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    assert env.count("deadletter") == 0 and env.count("spool") == 0
    expected = expected_messages(lines)
    arrival = check_arrival(consume_all(mock_cluster.bootstrap, "mycluster",
                                        expected=len(expected), timeout=30), expected)
    assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload
    print(f"fatal {code}: rebuilt, nothing lost, {arrival.duplicates} duplicate(s)")


def test_a_failed_commit_stops_the_replay_where_the_state_stands_and_a_rerun_sends_the_rest(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's commit fails (here the flush of the ones before it, which the disk refused): the
    replay stops with the state's error, the position where the last batch committed left the
    file, so that no line is passed over; a rerun, the disk good again, sends every record."""
    monkeypatch.setattr("jobcompd.state._flush._RETRY_S", 0.05)
    mock_cluster.create_topic("mycluster", partitions=16)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, kafka_toml=SPREAD_BY_KEY)  # (the mock keeps ~5 MB a partition)
    settings = load_settings(env.config)
    lines = mixed_lines(8 * BATCH_LINES, seed=11)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))

    def replayer(state: State) -> Replayer:
        ingestor = Ingestor.configured(state, settings.source, settings.cluster)
        return Replayer(state, ingestor, Sender(state, settings.kafka, window=REPLAY_WINDOW))

    with State.open(env.state_dir) as state:  # (synchronous = "full": flushed by a thread)
        disk = slow_disk(state)
        disk.error = OSError(errno.EIO, os.strerror(errno.EIO))
        first = replayer(state)
        with pytest.raises(StateError, match="cannot flush"):
            first.run([str(log)])
        read = first.summary.lines
        assert 0 < read < len(lines)
        (stored,) = state.positions()
        assert (stored.offset, stored.line_no) == (sum(map(len, lines[:read])), read)
        disk.error = None
        disk.wait_for(1)
        wait_for(lambda: state._flusher is not None and state._flusher._error is None,
                 timeout=10, what="the flush noted")
        again = replayer(state).run([str(log)])
    assert again.complete and again.lines == len(lines) - read, again
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60), expected
    )
    assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload


def test_a_sender_that_fails_ends_the_replay_with_its_error_and_loses_nothing(
    mock_cluster: MockCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sender's thread fails (a bug, say): the replay stops reading and ends with that error,
    not a wait for a sender that is gone; what it read stays in the state, for the next run."""
    mock_cluster.create_topic("mycluster", partitions=16)
    env = JobcompdEnv(tmp_path, mock_cluster.bootstrap, kafka_toml=SPREAD_BY_KEY)
    settings = load_settings(env.config)
    lines = mixed_lines(20 * BATCH_LINES, seed=12)
    log = tmp_path / "jobcomp.log"
    log.write_bytes(b"".join(lines))

    def failing(self: Sender, timeout: float = 0.1) -> int:
        raise RuntimeError("the sender's bug")

    monkeypatch.setattr(Sender, "pump", failing)
    with State.open(env.state_dir, synchronous="normal") as state:
        ingestor = Ingestor.configured(state, settings.source, settings.cluster)
        replayer = Replayer(state, ingestor, Sender(state, settings.kafka, window=REPLAY_WINDOW))
        with pytest.raises(RuntimeError, match="the sender's bug"):
            replayer.run([str(log)])
        ingestor.close()
        read = replayer.summary.records
        assert 0 < read < len(lines)  # it stopped reading
        assert state.spool_depth() + state.stats().delivered_total == read
    monkeypatch.undo()
    done = env.run("replay", "--json", str(log))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = expected_messages(lines)
    arrival = check_arrival(
        consume_all(mock_cluster.bootstrap, "mycluster", expected=len(expected), timeout=60), expected
    )
    assert not arrival.missing and not arrival.unexpected and not arrival.wrong_payload
