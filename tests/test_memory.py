"""The allocator tuning of a long-running process (:mod:`jobcompd._memory`), seen in a child."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from jobcompd._memory import ARENAS

# Six threads allocate at once, then glibc's malloc_stats() lists one "Arena N:" per arena.
_CHILD = """
import ctypes, sys, threading
if sys.argv[1] == "tuned":
    from jobcompd._memory import tune_memory
    tune_memory()
barrier = threading.Barrier(6)
def work():
    held = [bytearray(200_000) for _ in range(8)]
    barrier.wait()
    barrier.wait()
    del held
threads = [threading.Thread(target=work) for _ in range(6)]
for t in threads: t.start()
for t in threads: t.join()
ctypes.CDLL(None).malloc_stats()
"""


def arenas(mode: str, **env: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, timeout=60,
        env={k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"} | env,
    )
    assert done.returncode == 0, done.stderr
    return sum(line.startswith("Arena ") for line in done.stderr.splitlines())


@pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                    reason="glibc's allocator only")
def test_threads_share_a_few_malloc_arenas_unless_the_administrator_says_otherwise() -> None:
    assert arenas("plain") > ARENAS  # glibc's default gives the threads arenas of their own
    assert arenas("tuned") <= ARENAS
    assert arenas("tuned", MALLOC_ARENA_MAX="5") > ARENAS  # an administrator's setting stands


def test_the_daemon_loads_prometheus_client_only_when_metrics_are_configured() -> None:
    # ~3.5 MB of the daemon's memory, for an endpoint that is off by default.
    # The daemon's modules, then what Monitoring._start_metrics imports when they are configured.
    child = (
        "import sys, jobcompd.cli, jobcompd.daemon\n"
        "print('prometheus_client' in sys.modules)\n"
        "from jobcompd.metrics import Metrics\n"
        "print('prometheus_client' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True"]
