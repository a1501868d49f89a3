"""Logging: key=value and JSON rendering, syslog over a real datagram socket, librdkafka routing."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from pathlib import Path

from jobcompd.config import LogSettings

SCRIPT = """
import sys, structlog
from jobcompd import logs
from jobcompd.config import LogSettings
logs.configure(LogSettings(level=sys.argv[1], format=sys.argv[2], target=sys.argv[3],
                           facility="local3"))
log = structlog.get_logger("jobcompd.test")
log.debug("hidden unless debug", n=0)
log.info("job delivered", jobid=42, rid="abc")
logs.librdkafka_logger().error("FAIL [rdkafka#producer-1]: broker down")
"""


def run(level: str, fmt: str, target: str, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, level, fmt, target],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, **(env or {})},
    )
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_key_value_to_stderr_with_level_filter() -> None:
    out = run("info", "kv", "stderr").splitlines()
    assert len(out) == 2
    assert "level='info'" in out[0] and "event='job delivered'" in out[0] and "jobid=42" in out[0]
    assert out[0].startswith("timestamp=")
    assert "event='librdkafka'" in out[1] and "broker down" in out[1] and "level='error'" in out[1]
    assert len(run("debug", "kv", "stderr").splitlines()) == 3


def test_json_format() -> None:
    rows = [json.loads(line) for line in run("info", "json", "stderr").splitlines()]
    assert rows[0]["event"] == "job delivered" and rows[0]["jobid"] == 42
    assert rows[0]["level"] == "info" and "timestamp" in rows[0]
    assert rows[1]["event"] == "librdkafka" and rows[1]["level"] == "error"


def test_syslog_target_facility_and_ident(tmp_path: Path) -> None:
    path = str(tmp_path / "log.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(10)
    try:
        assert run("info", "kv", "syslog", {"JOBCOMPD_SYSLOG_SOCKET": path}) == ""
        first = sock.recv(4096).decode()
        second = sock.recv(4096).decode()
    finally:
        sock.close()
    local3 = 19
    assert first.startswith(f"<{local3 * 8 + 6}>jobcompd[")  # facility local3, severity info
    assert "event='job delivered'" in first and "timestamp=" not in first  # syslog stamps it
    assert second.startswith(f"<{local3 * 8 + 3}>jobcompd[") and "broker down" in second


def test_configure_is_idempotent_for_reload() -> None:
    from jobcompd import logs

    logs.configure(LogSettings())
    logs.configure(LogSettings(level="debug", format="json"))
    assert len(logging.getLogger("jobcompd").handlers) == 1
    logs.configure(LogSettings())


def test_quieter_logs_the_first_of_a_kind_and_then_a_count() -> None:
    import time

    import structlog
    from structlog.testing import capture_logs

    from jobcompd.logs import Quieter

    with capture_logs() as logs:
        quiet = Quieter(structlog.get_logger("t"), interval=0.3)
        for n in range(5):
            quiet.log("down", logging.ERROR, "broker down", n=n)
        quiet.log("other", logging.WARNING, "something else")
        quiet.flush()  # the interval is not over: nothing yet
        time.sleep(0.35)
        quiet.flush()
        quiet.log("down", logging.ERROR, "broker down", n=9)  # a new interval: logged again
    assert [(e["event"], e.get("n"), e.get("repeated")) for e in logs] == [
        ("broker down", 0, None),
        ("something else", None, None),
        ("broker down", 0, 4),
        ("broker down", 9, None),
    ]
