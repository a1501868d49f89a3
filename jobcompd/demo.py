"""``make demo``: the real pipeline on an embedded default, end to end, on loopback only.

1. starts a local Kafka-protocol broker (librdkafka's mock cluster, in its own process: no Java);
2. writes a configuration into a temporary directory and starts ``jobcompd run`` on an empty log;
3. appends job lines the way slurmctld does (``O_APPEND``, one write per record) — lines of every
   Slurm generation from the shipped sample, hostile names included, and one malformed line;
4. reads the topic back and prints each JSON message as it arrives;
5. shows ``jobcompd status`` and stops everything cleanly (SIGTERM, as systemd does).

It needs a source checkout (it borrows the test suite's broker and line writer): run it with
``make demo`` from the repository.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path

TOPIC = "democluster"


def _say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    try:
        from tests.brokers.mockcluster import MockCluster
        from tests.brokers.readback import consume_all
        from tests.slurmctld import SlurmctldWriter
    except ImportError:
        print(
            "make demo needs the source checkout (tests/brokers): run it from the repository", file=sys.stderr
        )
        return 2
    exe = str(Path(sys.executable).parent / "jobcompd")
    sample = (resources.files("jobcompd") / "data" / "sample_jobcomp.log").read_bytes()
    lines = sample.splitlines(keepends=True)
    with tempfile.TemporaryDirectory(prefix="jobcompd-demo-") as tmp, MockCluster(brokers=1) as kafka:
        work = Path(tmp)
        kafka.create_topic(TOPIC, partitions=1)
        _say(f"broker: librdkafka mock cluster at {kafka.bootstrap} (loopback)")
        log = work / "slurm_jobcomp.log"
        (work / "rdkafka.conf").write_text(f"bootstrap.servers={kafka.bootstrap}\nlinger.ms=5\n")
        config = work / "jobcompd.toml"
        config.write_text(
            f'[source]\npath = "{log}"\ntimezone = "Europe/Berlin"\n'
            f'[kafka]\nrdkafka_conf = "{work / "rdkafka.conf"}"\n'
            f'params = "topic={TOPIC},flush_timeout=2000,poll_interval=1"\n'
            f'[state]\ndir = "{work / "state"}"\n[log]\nlevel = "info"\n'
        )
        _say(f"config: {config}")
        print(config.read_text(), end="")
        _say("starting: jobcompd run -c " + str(config))
        daemon = subprocess.Popen([exe, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(1.0)
            _say(f"appending {len(lines)} lines to {log} as slurmctld does")
            with SlurmctldWriter(log) as writer:
                for line in lines:
                    writer.write(line)
                    print("  wrote:", line.decode(errors="replace").rstrip()[:100], "…")
                    time.sleep(0.2)
            expected = sum(1 for line in lines if line.startswith(b"JobId="))
            _say(f"reading topic {TOPIC!r} back from Kafka")
            messages = consume_all(kafka.bootstrap, TOPIC, expected=expected, timeout=30)
            for msg in messages:
                value, key = msg.value() or b"", msg.key() or b""
                record = json.loads(value)
                print(f"  key {key.decode()}  job {record['jobid']}:")
                print("   ", value.decode())
            print(f"\n  {len(messages)} message(s) for {expected} job line(s)")
            _say("jobcompd status")
            status = subprocess.run([exe, "status", "-c", str(config)], capture_output=True, text=True)
            print(status.stdout, end="")
        finally:
            _say("stopping the daemon (SIGTERM)")
            daemon.send_signal(signal.SIGTERM)
            try:
                _, err = daemon.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                _, err = daemon.communicate()
            print("  daemon log:")
            for row in err.splitlines():
                if not row.startswith("%"):
                    print("   ", row)
            print(f"  exit status {daemon.returncode}")
    ok = daemon.returncode == 0 and len(messages) == expected
    _say("demo " + ("finished" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
