"""The systemd unit and the logrotate snippet, checked by the tools that will read them.

``systemd-analyze verify`` and ``systemd-analyze security --offline`` read
``systemd/jobcompd.service``; ``logrotate`` parses ``etc/logrotate.d/slurm-jobcomp`` and rotates a
log in a temp dir with it. Debian's ``systemd`` and ``logrotate`` packages are installed when the
tools are missing (this needs root; without root the tests fail and say what to install).
"""

from __future__ import annotations

import grp
import gzip
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
UNIT = REPO / "systemd" / "jobcompd.service"
LOGROTATE_SNIPPET = REPO / "etc" / "logrotate.d" / "slurm-jobcomp"
CONFIG = REPO / "etc" / "jobcompd.toml"
JOBCOMP_LOG = "/var/log/slurm_jobcomp.log"
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# systemd 252 rates this unit 1.1: what is left is network access (jobcompd talks to Kafka), no
# IP allow list (broker addresses are site-specific), the host's root directory, and the
# read-only RTC access that ProtectClock= itself adds. The margin absorbs other systemd versions.
MAX_EXPOSURE = 1.5

APT_TIMEOUT_S = 600


def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for a dpkg lock held by another apt run instead of failing at once.
    cmd = ["apt-get", "-q", "-y", "-o", "DPkg::Lock::Timeout=300", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=env, timeout=APT_TIMEOUT_S, check=False
    )


def _apt_has_candidate(package: str) -> bool:
    policy = subprocess.run(
        ["apt-cache", "policy", package], capture_output=True, text=True, check=False
    )
    match = re.search(r"^\s*Candidate:\s*(\S+)", policy.stdout, re.MULTILINE)
    return match is not None and match.group(1) != "(none)"


def _ensure_tool(program: str, package: str) -> str:
    """The path of ``program``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(program, path=SBIN_PATH)
    if found:
        return found
    if shutil.which("apt-get") is None:
        pytest.fail(f"{program} is missing and there is no apt-get to install {package} with")
    if os.geteuid() != 0:
        pytest.fail(
            f"{program} is missing and only root can install it: run "
            f"`apt-get install --no-install-recommends {package}` as root, then rerun the tests"
        )
    # A stale or empty package list can lack the package or name versions the mirror no longer
    # has: refresh it then, and only then.
    if not _apt_has_candidate(package):
        _apt("update")
    install = ("install", "--no-install-recommends", package)
    done = _apt(*install)
    if done.returncode != 0:
        _apt("update")
        done = _apt(*install)
    found = shutil.which(program, path=SBIN_PATH)
    if done.returncode != 0 or not found:
        pytest.fail(
            f"`apt-get install {package}` did not provide {program} "
            f"(exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
        )
    return found


@pytest.fixture(scope="session")
def systemd_analyze() -> str:
    return _ensure_tool("systemd-analyze", "systemd")


@pytest.fixture(scope="session")
def logrotate() -> str:
    return _ensure_tool("logrotate", "logrotate")


def _directives(text: str) -> dict[str, list[str]]:
    """``Key`` → its values in file order, over all sections (the unit's keys do not repeat)."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(value.strip())
    return found


def _testable_unit(tmp_path: Path) -> Path:
    """A copy of the unit whose ExecStart names an executable that exists here."""
    exe = shutil.which("jobcompd", path=str(Path(sys.executable).parent)) or sys.executable
    text = UNIT.read_text()
    testable = re.sub(r"^ExecStart=/opt/jobcompd/bin/jobcompd ", f"ExecStart={exe} ", text, flags=re.M)
    assert testable != text, "ExecStart=/opt/jobcompd/bin/jobcompd ... not found in the unit"
    copy = tmp_path / UNIT.name
    copy.write_text(testable)
    return copy


def test_unit_declares_the_service_contract() -> None:
    unit = _directives(UNIT.read_text())
    expected = {
        "Type": ["notify"],
        "NotifyAccess": ["main"],
        "ExecStart": ["/opt/jobcompd/bin/jobcompd run -c /etc/jobcompd/jobcompd.toml"],
        "ExecReload": ["/bin/kill -HUP $MAINPID"],
        "WatchdogSec": ["30"],
        "Restart": ["on-failure"],
        "User": ["slurm"],
        "Group": ["slurm"],
        "StateDirectory": ["jobcompd"],
        "StateDirectoryMode": ["0700"],
        "ConfigurationDirectory": ["jobcompd"],
        "ProtectSystem": ["strict"],
        "UMask": ["0077"],
        "CapabilityBoundingSet": [""],
        "AmbientCapabilities": [""],
        "MemoryDenyWriteExecute": ["yes"],
        "RestrictAddressFamilies": ["AF_UNIX AF_INET AF_INET6"],
        "WantedBy": ["multi-user.target"],
    }
    assert {key: unit.get(key) for key in expected} == expected
    assert "network-online.target" in unit["Wants"][0]
    assert set(unit["After"][0].split()) >= {"network-online.target", "slurmctld.service"}
    # The log is only read: nothing outside StateDirectory= (and PrivateTmp=) is writable.
    assert "ReadWritePaths" not in unit


def test_shipped_config_keeps_its_state_in_the_state_directory() -> None:
    state_dir = tomllib.loads(CONFIG.read_text()).get("state", {}).get("dir")
    assert state_dir == "/var/lib/jobcompd"


def test_unit_passes_systemd_analyze_verify(systemd_analyze: str, tmp_path: Path) -> None:
    unit = _testable_unit(tmp_path)
    cmd = [systemd_analyze, "verify", "--man=no", "--recursive-errors=no", str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    # In a container verify may also talk about other units; what concerns ours names it.
    ours = [line for line in output.splitlines() if UNIT.name in line or str(unit) in line]
    assert ours == [], "\n".join(ours)
    assert done.returncode == 0, output


def test_unit_exposure_is_ok(
    systemd_analyze: str, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    unit = _testable_unit(tmp_path)
    cmd = [systemd_analyze, "security", "--offline=true", "--no-pager", str(unit)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    overall = [line for line in lines if "Overall exposure level" in line]
    assert len(overall) == 1, done.stdout
    print()
    print(overall[0].lstrip("→ ").strip())
    # What still counts against the unit, with its weight: the report's ✗ lines.
    for line in lines:
        if line.startswith("✗"):
            print("  " + " ".join(line.split()))
    match = re.search(r":\s*(\d+(?:\.\d+)?)\s+(\S+)", overall[0])
    assert match, overall[0]
    exposure, verdict = float(match.group(1)), match.group(2)
    record_property("systemd_exposure", f"{exposure} {verdict}")
    assert verdict == "OK" and exposure <= MAX_EXPOSURE, overall[0]


# The body of the snippet's postrotate ... endscript block.
_POSTROTATE = re.compile(r"^\s*postrotate\n(.*?\n)\s*endscript$", re.M | re.S)


def _testable_snippet(tmp_path: Path, postrotate: str | None = None) -> tuple[Path, Path]:
    """The snippet rotating a log in ``tmp_path``, owned by whoever runs the test.

    ``postrotate``, if given, replaces the script (the real one signals slurmctld). Returns the
    config file and the log.
    """
    log = tmp_path / "log" / "slurm_jobcomp.log"
    log.parent.mkdir(mode=0o755)
    text = LOGROTATE_SNIPPET.read_text()
    assert text.count(JOBCOMP_LOG) == 1 and "\n    create 0644 slurm slurm\n" in text
    user = pwd.getpwuid(os.geteuid()).pw_name
    group = grp.getgrgid(os.getegid()).gr_name
    text = text.replace(JOBCOMP_LOG, str(log))
    text = text.replace("create 0644 slurm slurm", f"create 0644 {user} {group}")
    script = _POSTROTATE.search(text)
    assert script, "no postrotate ... endscript in the snippet"
    if postrotate is not None:
        text = f"{text[: script.start(1)]}        {postrotate}\n{text[script.end(1) :]}"
    config = tmp_path / "slurm-jobcomp"
    config.write_text(text)
    config.chmod(0o644)
    return config, log


def test_logrotate_parses_the_snippet(logrotate: str, tmp_path: Path) -> None:
    # -d (debug) only reads the config and says what it would do; it runs no scripts.
    config, log = _testable_snippet(tmp_path)
    log.write_text("JobId=1 UserId=alice(1000)\n")
    cmd = [logrotate, "-d", "-s", str(tmp_path / "state"), str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert not [line for line in output.splitlines() if "error" in line.lower()], output
    assert f"considering log {log}" in output, output


def test_logrotate_renames_recreates_and_delays_compression(
    logrotate: str, tmp_path: Path
) -> None:
    marker = tmp_path / "postrotate-ran"
    config, log = _testable_snippet(tmp_path, postrotate=f"echo ran >> {marker}")
    cmd = [logrotate, "-f", "-s", str(tmp_path / "state"), str(config)]

    log.write_text("JobId=1\n")
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert first.returncode == 0, first.stdout + first.stderr
    rotated = log.with_name(log.name + ".1")
    assert rotated.read_text() == "JobId=1\n"
    assert log.read_text() == ""
    assert stat.S_IMODE(log.stat().st_mode) == 0o644
    assert not log.with_name(log.name + ".1.gz").exists()

    with log.open("a") as fh:
        fh.write("JobId=2\n")
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stdout + second.stderr
    assert rotated.read_text() == "JobId=2\n"
    assert gzip.decompress(log.with_name(log.name + ".2.gz").read_bytes()) == b"JobId=1\n"
    assert log.read_text() == ""
    assert marker.read_text() == "ran\nran\n"


@pytest.mark.parametrize(("pkill_exit", "script_ok"), [(0, True), (1, True), (2, False)])
def test_postrotate_tolerates_no_slurmctld_only(
    tmp_path: Path, pkill_exit: int, script_ok: bool
) -> None:
    # The real script, with a stand-in pkill: 0 signalled, 1 no slurmctld, 2+ a real error.
    script = _POSTROTATE.search(LOGROTATE_SNIPPET.read_text())
    assert script
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "pkill"
    fake.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\nexit {pkill_exit}\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"}
    done = subprocess.run(["/bin/sh", "-c", script.group(1)], env=env, timeout=10, check=False)
    assert (done.returncode == 0) == script_ok
    assert (tmp_path / "args").read_text().split() == ["-x", "--signal", "SIGUSR2", "slurmctld"]
