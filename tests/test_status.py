"""``jobcompd status`` reads the running daemon's health: a stuck daemon is never OK."""

from __future__ import annotations

import grp
import os
import shutil
import time
from pathlib import Path

import pytest

from jobcompd import fastpath, status
from jobcompd.config import load_settings
from jobcompd.health import Health, read_health, write_health
from jobcompd.identity import Position, fingerprint
from jobcompd.lock import StateDirLock
from jobcompd.state import State
from tests.slurmctld import mixed_lines


def configured(root: Path, lines: list[bytes], extra: str = "") -> Path:
    """A log of ``lines``, a properties file and a jobcompd.toml in ``root``; the config's path."""
    log = root / "jobcomp.log"
    log.write_bytes(b"".join(lines))
    (root / "rdkafka.conf").write_text("bootstrap.servers=127.0.0.1:9\n")
    config = root / "jobcompd.toml"
    config.write_text(
        f'[source]\npath = "{log}"\ntimezone = "UTC"\n'
        f'[kafka]\nrdkafka_conf = "{root / "rdkafka.conf"}"\nparams = "topic=t"\n'
        f'[state]\ndir = "{root / "state"}"\n{extra}'
    )
    return config


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    lines = mixed_lines(10, seed=3)
    log = tmp_path / "jobcomp.log"
    config = configured(tmp_path, lines, "[status]\nstall_s = 60\n")
    with State.open(tmp_path / "state") as state:  # three lines read, seven not yet
        done = len(b"".join(lines[:3]))
        fp = fingerprint(lines[0], 65536)
        state.commit_batch([], position=Position(f"file:{fp}", str(log), fp, done, 3))
    return config, tmp_path / "state"


def verdict(config: Path) -> status.StatusReport:
    return status.collect(load_settings(config))


def problems(report: status.StatusReport) -> str:
    return " | ".join(text for _, text in report.problems)


def test_a_daemon_reading_nothing_while_the_log_grows_is_critical(setup: tuple[Path, Path]) -> None:
    config, state_dir = setup
    now = time.time()
    with StateDirLock(state_dir):
        write_health(state_dir, Health(os.getpid(), started_at=now - 600, updated_at=now,
                                       last_read_at=now - 300))
        report = verdict(config)
        assert report.exit_code == status.CRITICAL, problems(report)
        assert "unread and nothing read for 300 s" in problems(report)
        # Reading recently: the lag is only lag.
        write_health(state_dir, Health(os.getpid(), started_at=now - 600, updated_at=now,
                                       last_read_at=now - 5))
        assert "nothing read" not in problems(verdict(config))


def test_a_daemon_that_cannot_commit_or_does_not_report_is_critical(setup: tuple[Path, Path]) -> None:
    config, state_dir = setup
    now = time.time()
    with StateDirLock(state_dir):
        write_health(state_dir, Health(os.getpid(), started_at=now - 60, updated_at=now,
                                       last_read_at=now, state_error="database or disk is full",
                                       state_error_since=now - 42))
        report = verdict(config)
        assert report.exit_code == status.CRITICAL
        assert "cannot write its state (for 42 s): database or disk is full" in problems(report)
        write_health(state_dir, Health(os.getpid(), started_at=now - 600, updated_at=now - 200,
                                       last_read_at=now - 200))
        assert "has not reported for 200 s" in problems(verdict(config))


def test_health_is_overwritten_in_place_and_read_back(tmp_path: Path) -> None:
    first = Health(1, started_at=1.0, updated_at=2.0, state_error="x" * 5000)
    assert write_health(tmp_path, first)
    size = (tmp_path / "health.json").stat().st_size
    assert write_health(tmp_path, Health(1, started_at=1.0, updated_at=3.0))
    assert (tmp_path / "health.json").stat().st_size == size == 4096
    back = read_health(tmp_path)
    assert back is not None and back.updated_at == 3.0 and back.state_error is None


def test_the_first_line_is_the_verdict_with_performance_data(setup: tuple[Path, Path]) -> None:
    config, _ = setup
    first = status.render(verdict(config)).splitlines()[0]
    # No daemon runs here: critical, with the reason, then the performance data.
    assert first.startswith("jobcompd CRITICAL: no jobcompd is running")
    assert first.endswith(
        "| spool=0;10000;100000 lag_bytes=" + first.split("lag_bytes=")[1].split()[0]
        + " dead_letters=0 quarantined=0 oldest_undelivered_s=0s"
    )
    assert "lag_bytes=" in first and first.split("lag_bytes=")[1].split()[0].endswith("B")


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="runs status as another user: needs root and setpriv")
def test_status_as_a_user_who_cannot_read_the_state_is_unknown_in_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys
    import tempfile

    from tests.jobcompd_env import JOBCOMPD

    root = Path(tempfile.mkdtemp(prefix="jobcompd-status-"))
    try:
        os.chmod(root, 0o755)
        config = configured(root, mixed_lines(3, seed=3))
        for path in (root / "jobcomp.log", root / "rdkafka.conf", config):
            os.chmod(path, 0o644)
        with State.open(root / "state"):
            pass  # 0700, owned by root: a monitoring user cannot look inside

        def as_nobody() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", sys.executable,
                 JOBCOMPD, "status", "-c", str(config)],
                capture_output=True, text=True, timeout=60,
            )

        done = as_nobody()
        assert done.returncode == 3, (done.stdout, done.stderr)
        assert done.stdout.startswith("jobcompd UNKNOWN: cannot read ")
        assert "permission denied" in done.stdout and "root:root owns" in done.stdout
        assert len(done.stdout.splitlines()) == 1 and "Traceback" not in done.stderr

        # With [status] file in a directory of the monitoring group, the daemon's report there
        # gives a real verdict (the state stays private).
        shared = root / "run"
        shared.mkdir()
        nogroup = grp.getgrnam("nogroup").gr_gid
        os.chown(shared, 0, nogroup)
        os.chmod(shared, 0o750)
        report = shared / "status.json"
        with config.open("a") as fh:
            fh.write(f'[status]\nfile = "{report}"\n')
        now = time.time()
        assert write_health(root, Health(os.getpid(), started_at=now - 60, updated_at=now,
                                         last_read_at=now, brokers_up=3, spool_depth=7,
                                         delivered_total=93, lag_bytes=0, quarantined=1),
                            path=report, mode=0o640)
        os.chown(report, 0, nogroup)
        done = as_nobody()
        first = done.stdout.splitlines()[0]
        assert done.returncode == 1, (done.stdout, done.stderr)  # the quarantined line
        assert first.startswith("jobcompd WARNING: 1 quarantined line(s)")
        assert "| spool=7;10000;100000 lag_bytes=0B dead_letters=0 quarantined=1" in first
        assert "Traceback" not in done.stderr
    finally:
        shutil.rmtree(root, ignore_errors=True)


def test_status_says_which_record_reader_the_daemon_uses(setup: tuple[Path, Path]) -> None:
    config, state_dir = setup
    now = time.time()
    with StateDirLock(state_dir):
        write_health(state_dir, Health(os.getpid(), started_at=now, updated_at=now, last_read_at=now,
                                       reader="python (JOBCOMPD_PARSER=python)"))
        assert "reader:          python (JOBCOMPD_PARSER=python)" in status.render(verdict(config))
    # No daemon: this installation's reader.
    assert f"reader:          {fastpath.PARSER}" in status.render(verdict(config))
