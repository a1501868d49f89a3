"""The compiled fast path for the usual record, and which path is in use.

``jobcompd/_fastline.c`` reads the ordinary filetxt record — one line, each key that ends a free
value once, plain values, a time zone hour with one offset — into the plugin's JSON bytes and the
record id, and answers "not mine" for anything else; the Python reader (:mod:`jobcompd.record`,
:mod:`jobcompd.joining`, :mod:`jobcompd.encode`) reads those lines, and is the reference: wherever the
compiled code answers, its bytes are the Python path's (``tests/test_fastline.py``, the fuzzer).

The extension is built when ``pip install`` finds a C compiler and the Python headers; without it,
or with ``JOBCOMPD_PARSER=python`` in the environment, everything runs on the Python path.
:data:`PARSER` says which (``jobcompd --version``, ``jobcompd status``).
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from jobcompd.encode import RECORD_ID_PERSON
from jobcompd.zone import Zone, ZoneSpec

__all__ = ["PARSER", "compiled_alone", "compiled_encoder", "load_compiled", "offset_of_hour"]

def load_compiled(module: str, what: str) -> tuple[Any, str]:
    """The compiled module ``jobcompd.<module>`` (``what`` it is) and ``"compiled"``; or ``None``
    and why the Python path runs: it is not built, or ``JOBCOMPD_PARSER=python`` asks for it."""
    if os.environ.get("JOBCOMPD_PARSER", "").strip().lower() in ("python", "pure", "py"):
        return None, "python (JOBCOMPD_PARSER=python)"
    try:
        return importlib.import_module(f"jobcompd.{module}"), "compiled"
    except ImportError:
        return None, f"python (the compiled {what} is not built)"


_compiled, PARSER = load_compiled("_fastline", "reader")

_EPOCH = datetime(1970, 1, 1)
_LAST_SECOND = timedelta(minutes=59, seconds=59)


def offset_of_hour(zone: ZoneInfo) -> Callable[[int], int | None]:
    """For local hour number ``h`` (local wall-clock seconds since 1970 read as UTC, // 3600): the
    zone's UTC offset in seconds when that whole hour has one offset and no time in it is repeated
    or skipped by a DST change, else ``None`` (the compiled reader then leaves the line to Python)."""

    def offset(hour: int) -> int | None:
        try:
            start = _EPOCH + timedelta(hours=hour)
            last = start + _LAST_SECOND
            offsets = {
                moment.replace(tzinfo=zone, fold=fold).utcoffset()
                for moment in (start, last)
                for fold in (0, 1)
            }
        except (OverflowError, ValueError):
            return None
        if len(offsets) != 1:
            return None
        (only,) = offsets
        return None if only is None else int(only.total_seconds())

    return offset


def _new_encoder(zone: ZoneSpec, cluster: str | None, max_bytes: int) -> Any:
    tz = Zone.from_spec(zone).tz
    return _compiled.Encoder(offset_of_hour(tz), (cluster or "").encode(), max_bytes, RECORD_ID_PERSON)


@functools.lru_cache(maxsize=8)
def compiled_encoder(zone: ZoneSpec, cluster: str | None, max_bytes: int) -> Any:
    """The compiled encoder for a zone, fallback cluster and longest record, or ``None`` on the
    Python path."""
    return None if _compiled is None else _new_encoder(zone, cluster, max_bytes)


@functools.lru_cache(maxsize=8)
def compiled_alone(zone: ZoneSpec, max_bytes: int) -> Callable[[bytes], str | None] | None:
    """``alone(line)``: what the compiled reader reads ``line`` alone as — ``"17.11+"``, a record of
    17.11 or later; ``"17.02"``, a 17.02 record; ``None`` when it does not answer (the Python reader
    decides) — or ``None`` on the Python path.

    It has an encoder of its own, so it never waits for a batch being read on the parse thread.
    """
    if _compiled is None:
        return None
    encode_line = _new_encoder(zone, None, max_bytes).encode_line

    def alone(line: bytes) -> str | None:
        if encode_line(line) is None:
            return None
        # A 17.02 record has none of the 17.11 keys, and an answered line with " Cluster=" has
        # each of them once (the compiled reader answers for no line with a key inside a value).
        return "17.11+" if b" Cluster=" in line else "17.02"

    return alone
