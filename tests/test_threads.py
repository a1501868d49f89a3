"""The names jobcompd's threads carry in the OS (`jobcompd.threads`)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from jobcompd.threads import NamedThread, name_this_thread, os_name

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="thread names are read from /proc")


def _comm(tid: int) -> str:
    return Path(f"/proc/self/task/{tid}/comm").read_text().strip()


def test_the_os_name_drops_the_process_prefix_and_keeps_15_bytes() -> None:
    assert os_name("jobcompd-sender") == "sender"
    assert os_name("jobcompd-parse") == "parse"
    assert os_name("jobcompd-producer-id") == "producer-id"
    assert os_name("a-thread-of-another-name") == "a-thread-of-ano"
    assert os_name("jobcompd-ééééééééé") == "ééééééé"  # never half a character


@linux_only
def test_a_named_thread_carries_its_name_in_the_os() -> None:
    seen: list[str] = []
    thread = NamedThread(target=lambda: seen.append(_comm(threading.get_native_id())), name="jobcompd-flush")
    thread.start()
    thread.join()
    assert seen == ["flush"]


@linux_only
def test_naming_a_thread_leaves_the_others_as_they_were() -> None:
    main_before = _comm(threading.get_native_id())
    seen: list[str] = []

    def named() -> None:
        name_this_thread("jobcompd-parse")
        seen.append(_comm(threading.get_native_id()))

    thread = threading.Thread(target=named)
    thread.start()
    thread.join()
    assert seen == ["parse"]
    assert _comm(threading.get_native_id()) == main_before
