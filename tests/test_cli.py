"""``jobcompd`` command line, run as the installed console script (a real subprocess)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jobcompd import fastpath, sendloop
from tests.slurmctld import mixed_lines
from tests.test_encode import GOLDEN

SAMPLE = Path(__file__).resolve().parent.parent / "jobcompd" / "data" / "sample_jobcomp.log"


def jobcompd(*args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    exe = shutil.which("jobcompd", path=str(Path(sys.executable).parent)) or "jobcompd"
    return subprocess.run([exe, *args], input=stdin, capture_output=True, timeout=60)


def test_version_and_help() -> None:
    version = jobcompd("--version")
    assert version.returncode == 0 and version.stdout.startswith(b"jobcompd ")
    assert f"(record reader: {fastpath.PARSER}; send loop: {sendloop.SEND_LOOP})".encode() in version.stdout
    assert jobcompd("--help").returncode == 0
    helped = jobcompd("parse", "--help")
    assert helped.returncode == 0 and b"--tz" in helped.stdout


def test_parse_writes_json_in_order_and_reasons_to_stderr(tmp_path: Path) -> None:
    log = tmp_path / "jobcomp.log"
    lines = [g[1] for g in GOLDEN]
    lines.insert(2, b"garbage line\n")
    log.write_bytes(b"".join(lines))
    done = jobcompd("parse", "--tz", "Europe/Berlin", str(log))
    assert done.returncode == 1
    out = done.stdout.decode().splitlines()
    assert out == [g[2] for g in GOLDEN]
    assert done.stderr.decode() == f"{log}:3: not a jobcomp/filetxt record (no leading JobId=)\n"


def test_parse_stdin_gzip_and_exit_zero(tmp_path: Path) -> None:
    lines = mixed_lines(300, seed=7, zone=ZoneInfo("UTC"))
    gz = tmp_path / "jobcomp.log.1.gz"
    gz.write_bytes(gzip.compress(b"".join(lines[:150])))
    done = jobcompd("parse", "--tz", "UTC", str(gz), "-", stdin=b"".join(lines[150:]))
    assert done.returncode == 0, done.stderr
    records = [json.loads(x) for x in done.stdout.splitlines()]
    assert [r["jobid"] for r in records] == list(range(1000, 1300))


@pytest.mark.parametrize("compress", [bz2.compress, lzma.compress, gzip.compress], ids=["bz2", "xz", "gz"])
def test_parse_reads_every_compression_the_tailer_reads(tmp_path: Path, compress: Any) -> None:
    lines = mixed_lines(200, seed=8, zone=ZoneInfo("UTC"))
    plain = tmp_path / "jobcomp.log"
    plain.write_bytes(b"".join(lines))
    packed = tmp_path / "jobcomp.log.2.z"
    packed.write_bytes(compress(plain.read_bytes()))
    done = jobcompd("parse", "--tz", "UTC", str(packed))
    assert done.returncode == 0, done.stderr
    assert done.stdout == jobcompd("parse", "--tz", "UTC", str(plain)).stdout
    assert len(done.stdout.splitlines()) == 200


def test_parse_usage_and_io_errors(tmp_path: Path) -> None:
    assert jobcompd("parse", str(tmp_path / "missing.log")).returncode == 2
    bad_zone = jobcompd("parse", "--tz", "Nowhere/Land", str(SAMPLE))
    assert bad_zone.returncode == 2 and b"Nowhere/Land" in bad_zone.stderr
    assert jobcompd("parse", "--no-such-flag").returncode == 2
    assert jobcompd().returncode == 2


def test_shipped_sample_has_one_bad_line() -> None:
    done = jobcompd("parse", "--tz", "Europe/Berlin", str(SAMPLE))
    assert done.returncode == 1
    assert len(done.stdout.splitlines()) == 6
    assert done.stderr.count(b"\n") == 1


@pytest.mark.parametrize("generation_lines", [1, 5000])
def test_parse_many_lines(tmp_path: Path, generation_lines: int) -> None:
    log = tmp_path / "big.log"
    log.write_bytes(b"".join(mixed_lines(generation_lines, seed=3)))
    done = jobcompd("parse", "--tz", "UTC", str(log))
    assert done.returncode == 0, done.stderr[:500]
    assert len(done.stdout.splitlines()) == generation_lines


def test_make_demo_pipeline_runs() -> None:
    """The README's ``make demo``: broker, daemon, appended lines, JSON read back, clean stop."""
    done = subprocess.run(
        [sys.executable, "-m", "jobcompd.demo"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parent.parent,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "6 message(s) for 6 job line(s)" in done.stdout
    assert '"job_name":"hostile JobState=FAILED name"' in done.stdout
    assert "exit status 0" in done.stdout and "demo finished" in done.stdout


def write_config(tmp_path: Path, log: Path, state: Path) -> Path:
    conf = tmp_path / "rdkafka.conf"
    conf.write_text("bootstrap.servers=localhost:9092\n")
    config = tmp_path / "jobcompd.toml"
    config.write_text(
        f'[source]\npath = "{log}"\n[kafka]\nrdkafka_conf = "{conf}"\nparams = "topic=jobs"\n'
        f'[state]\ndir = "{state}"\n'
    )
    return config


@pytest.fixture
def reachable() -> Iterator[Path]:
    """A directory the service user may look into (pytest's own are private to root)."""
    path = Path(tempfile.mkdtemp(prefix="jobcompd-access-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="checking as another user needs root")
def test_check_config_as_the_service_user_names_each_problem_and_its_fix(reachable: Path) -> None:
    tmp_path = reachable
    log = tmp_path / "slurm_jobcomp.log"
    log.write_bytes(SAMPLE.read_bytes())
    log.chmod(0o600)  # root:root, as slurmctld running as root would leave it
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    config = write_config(tmp_path, log, locked / "state")
    (tmp_path / "rdkafka.conf").chmod(0o640)  # `install -m 0640` without -g

    as_root = jobcompd("check-config", "-c", str(config))
    assert as_root.returncode == 0, as_root.stderr
    assert b"ok   files: " in as_root.stdout

    checked = jobcompd("check-config", "-c", str(config), "--user", "nobody")
    assert checked.returncode == 1
    err = checked.stderr.decode()
    assert f"source.path: {log}: exists but cannot be read (permission denied) (as user nobody)" in err
    assert f"fix: chgrp nogroup {log} && chmod g+r {log}" in err
    conf = tmp_path / "rdkafka.conf"
    assert f"kafka.rdkafka_conf: {conf}: cannot be read (permission denied)" in err
    assert f"fix: chgrp nogroup {conf} && chmod g+r {conf}" in err
    assert f"state.dir: {locked / 'state'}: does not exist and cannot be created ({locked} is not writable)" in err
    assert f"fix: install -d -o nobody -g nogroup -m 0700 {locked / 'state'}" in err

    # Following the fixes makes the check pass.
    for path in (log, conf):
        os.chown(path, 0, 65534)
        path.chmod(0o640)
    os.makedirs(locked / "state")
    os.chown(locked / "state", 65534, 65534)
    locked.chmod(0o755)
    fixed = jobcompd("check-config", "-c", str(config), "--user", "nobody")
    assert fixed.returncode == 0, fixed.stderr
    assert b"usable by nobody" in fixed.stdout


def test_check_config_refuses_a_directory_as_the_log(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path, tmp_path / "state")
    checked = jobcompd("check-config", "-c", str(config))
    assert checked.returncode == 1
    assert b"is a directory, not the log file" in checked.stderr
    user = jobcompd("check-config", "-c", str(config), "--user", "no-such-user-here")
    assert user.returncode == 2


def test_check_config_warns_when_the_zone_is_not_the_systems(tmp_path: Path) -> None:
    config = write_config(tmp_path, tmp_path / "jobcomp.log", tmp_path / "state")
    config.write_text(config.read_text().replace("[source]\n", '[source]\ntimezone = "Europe/Berlin"\n'))

    def check(tz: str) -> str:
        done = subprocess.run([sys.executable, "-m", "jobcompd", "check-config", "-c", str(config)],
                              env={**os.environ, "TZ": tz}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return done.stderr

    warned = check("America/New_York")
    assert "source.timezone: 'Europe/Berlin' differs from this system's zone 'America/New_York'" in warned
    assert "differs" not in check("Europe/Berlin")
    assert "differs" not in check(":Europe/Berlin")
