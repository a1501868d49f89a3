"""The names jobcompd's threads carry in the operating system.

librdkafka names its threads (``rdk:broker1``) and rsyslog its own (``in:imfile``); jobcompd's
Python threads would otherwise all carry the process's name. Named, ``top -H``, ``ps -L`` and
``/proc/PID/task/*/comm`` show which of them is busy: ``parse``, ``sender``, ``flush`` beside the
main thread (``jobcompd``), which reads the log and commits.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Any

__all__ = ["NamedThread", "name_this_thread", "os_name"]

_PR_SET_NAME = 15
_NAME_BYTES = 15  # the kernel keeps 16 bytes, the last a NUL
_PREFIX = "jobcompd-"  # the process's own name says it


def _prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


_PRCTL = _prctl()


def os_name(name: str) -> str:
    """The name the OS shows for a thread named ``name`` in Python: without the ``jobcompd-``
    prefix, at most 15 bytes."""
    short = name.removeprefix(_PREFIX).encode()[:_NAME_BYTES]
    return short.decode(errors="ignore")


def name_this_thread(name: str) -> None:
    """Give the calling thread :func:`os_name` of ``name`` in the OS, where it can (Linux)."""
    if _PRCTL is not None:
        _PRCTL(_PR_SET_NAME, ctypes.c_char_p(os_name(name).encode()), 0, 0, 0)


class NamedThread(threading.Thread):
    """A thread that carries its name in the OS as well (:func:`name_this_thread`)."""

    def run(self) -> None:
        name_this_thread(self.name)
        super().run()
