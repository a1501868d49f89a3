"""The offline bundle: built as `make dist` builds it, installed with no index into a scratch
prefix, upgraded in place, uninstalled — as an admin of an air-gapped controller would."""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from jobcompd import __version__

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "jobcompd" / "data" / "sample_jobcomp.log"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    done = subprocess.run(
        ["sh", str(ROOT / "packaging" / "bundle.sh")],
        env={**os.environ, "PYTHON": sys.executable, "DIST_DIR": str(out)},
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    tarball = out / f"jobcompd-{__version__}-offline.tar.gz"
    with tarfile.open(tarball) as tar:
        tar.extractall(out, filter="data")
    return out / f"jobcompd-{__version__}-offline"


def install(bundle: Path, tmp: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # No index and no pip configuration: what a controller without network has.
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1"}
    env.pop("PIP_INDEX_URL", None)
    env.pop("VIRTUAL_ENV", None)
    return subprocess.run(
        ["sh", str(bundle / "install.sh"), "--prefix", str(tmp / "opt"), "--sysconfdir", str(tmp / "etc"),
         "--bindir", str(tmp / "bin"), "--python", sys.executable, "--no-systemd", *extra],
        env=env, capture_output=True, text=True, timeout=300,
    )


def test_the_bundle_holds_everything_an_air_gapped_install_needs(bundle: Path) -> None:
    names = {p.name.split("-")[0].lower() for p in (bundle / "wheels").glob("*.whl")}
    assert {"jobcompd", "confluent_kafka", "watchdog", "structlog", "python_daemon", "orjson",
            "pip"} <= names
    for path in ("install.sh", "etc/jobcompd.toml", "etc/rdkafka.conf", "etc/logrotate.d/slurm-jobcomp",
                 "systemd/jobcompd.service", "man/jobcompd.8", "man/jobcompd.toml.5", "LICENSE"):
        assert (bundle / path).is_file(), path


# No such user here: the files stay root's and, without systemd, no state directory is made (the
# shipped jobcompd.toml names /var/lib/jobcompd, which a test must not create).
NO_USER = ("--user", "jobcompd-test-no-such-user")


def test_install_upgrade_and_uninstall_without_an_index(bundle: Path, tmp_path: Path) -> None:
    first = install(bundle, tmp_path, *NO_USER)
    assert first.returncode == 0, first.stdout + first.stderr
    program = tmp_path / "bin" / "jobcompd"
    # The bundle's wheel carries the compiled reader and send loop, built where `make dist` ran
    # (asked without JOBCOMPD_PARSER, which `make test-python` sets).
    env = {k: v for k, v in os.environ.items() if k != "JOBCOMPD_PARSER"}
    version = subprocess.run([str(program), "--version"], capture_output=True, text=True, env=env)
    assert version.stdout.strip() == f"jobcompd {__version__} (record reader: compiled; send loop: compiled)"
    assert os.path.realpath(program) == str(tmp_path / "opt" / "bin" / "jobcompd")
    parsed = subprocess.run([str(program), "parse", "--tz", "Europe/Berlin", str(SAMPLE)],
                            capture_output=True, text=True)
    assert parsed.returncode == 1  # the sample's one bad line
    assert len([json.loads(x) for x in parsed.stdout.splitlines()]) == 6 and parsed.stderr.count("\n") == 1

    # The config files: installed 0640, pointing at each other in --sysconfdir.
    toml = tmp_path / "etc" / "jobcompd.toml"
    assert toml.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "etc" / "rdkafka.conf").stat().st_mode & 0o777 == 0o640
    assert f'rdkafka_conf = "{tmp_path}/etc/rdkafka.conf"' in toml.read_text()
    assert (tmp_path / "opt" / "share" / "man" / "man8" / "jobcompd.8").is_file()

    # Again: an upgrade in place that keeps the admin's configuration.
    toml.write_text(toml.read_text() + "# the admin's edit\n")
    again = install(bundle, tmp_path, *NO_USER)
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"kept {toml}" in again.stdout and toml.read_text().endswith("# the admin's edit\n")

    gone = subprocess.run(["sh", str(bundle / "install.sh"), "--uninstall", "--prefix", str(tmp_path / "opt"),
                           "--bindir", str(tmp_path / "bin"), "--no-systemd"],
                          capture_output=True, text=True, timeout=60)
    assert gone.returncode == 0, gone.stderr
    assert not (tmp_path / "opt").exists() and not program.exists() and not program.is_symlink()
    assert toml.exists() and f"kept the configuration in {tmp_path / 'etc'}" in gone.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory for another user needs root")
def test_without_systemd_the_state_directory_is_made_for_the_service_user(bundle: Path, tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "var" / "jobcompd"
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "jobcompd.toml").write_text(f'[state]\ndir = "{state}"\n')  # the admin's, kept
    done = install(bundle, tmp_path, "--user", "nobody")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"created the state directory {state} (0700, nobody:" in done.stdout
    made = state.stat()
    assert (stat.S_IMODE(made.st_mode), made.st_uid, made.st_gid) == (0o700, nobody.pw_uid, nobody.pw_gid)


def test_install_refuses_a_python_below_3_11(bundle: Path, tmp_path: Path) -> None:
    old = tmp_path / "python3.6"
    old.write_text("#!/bin/sh\nexit 1\n")
    old.chmod(0o755)
    refused = install(bundle, tmp_path, "--python", str(old))
    assert refused.returncode == 2 and "is not a Python >= 3.11" in refused.stderr
