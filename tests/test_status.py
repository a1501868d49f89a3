"""``jobcompd status`` reads the running daemon's health: a stuck daemon is never OK."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from jobcompd import status
from jobcompd.config import load_settings
from jobcompd.health import Health, read_health, write_health
from jobcompd.identity import fingerprint
from jobcompd.lock import StateDirLock
from jobcompd.state import ReadPosition, State
from tests.slurmctld import mixed_lines


@pytest.fixture
def setup(tmp_path: Path) -> tuple[Path, Path]:
    log = tmp_path / "jobcomp.log"
    lines = mixed_lines(10, seed=3)
    log.write_bytes(b"".join(lines))
    (tmp_path / "rdkafka.conf").write_text("bootstrap.servers=127.0.0.1:9\n")
    config = tmp_path / "jobcompd.toml"
    config.write_text(
        f'[source]\npath = "{log}"\ntimezone = "UTC"\n'
        f'[kafka]\nrdkafka_conf = "{tmp_path / "rdkafka.conf"}"\nparams = "topic=t"\n'
        f'[state]\ndir = "{tmp_path / "state"}"\n[status]\nstall_s = 60\n'
    )
    with State.open(tmp_path / "state") as state:  # three lines read, seven not yet
        done = len(b"".join(lines[:3]))
        fp = fingerprint(lines[0])
        state.commit_batch([], position=ReadPosition(f"file:{fp}", str(log), fp, done, 3, 0, 0, done))
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
