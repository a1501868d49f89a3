"""The running daemon's health: what it did last and what stops it, for ``jobcompd status``.

The daemon rewrites ``health.json`` in its state directory every few seconds and whenever its
health changes. ``status`` reads it, so a check sees what only the daemon knows — that it cannot
commit, or reads nothing while the log grows. The file is one block of fixed size overwritten in
place, so it can still be written when the disk is full (the moment it matters most); a daemon
that cannot write it at all shows as one whose report is old, which ``status`` judges as stuck.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from jobcompd.state import Stats

__all__ = ["HEALTH_NAME", "Health", "read_health", "write_health"]

HEALTH_NAME = "health.json"


@dataclass(slots=True)
class Health:
    """One report of the daemon (times are epoch seconds)."""

    pid: int
    started_at: float
    updated_at: float = 0.0
    last_read_at: float | None = None  # lines last read and committed
    last_delivery_at: float | None = None
    state_error: str | None = None  # why the state cannot be written, while it cannot
    state_error_since: float | None = None
    source_error: str | None = None  # why the log file cannot be read, while it cannot
    backpressure: bool = False  # reading paused: the spool is full
    brokers_up: int | None = None  # brokers librdkafka has up (None: not known yet)
    brokers_down_since: float | None = None  # none up since then
    # What `status` shows, for a monitoring user who may read this report but not the state:
    spool_depth: int = 0
    oldest_pending_at: float | None = None
    dead_letters: int = 0
    quarantined: int = 0
    delivered_total: int = 0
    last_delivered_jobid: int | None = None
    lag_bytes: int | None = None
    state_bytes: int = 0
    known_ids: int = 0
    reader: str | None = None  # the record reader in use: compiled, or python (and why)

    def take(self, stats: Stats) -> None:
        """Copy the numbers ``status`` shows from the state's statistics."""
        self.spool_depth = stats.spool_depth
        self.oldest_pending_at = stats.oldest_pending_at
        self.dead_letters = stats.deadletter_count
        self.quarantined = stats.quarantine_count
        self.delivered_total = stats.delivered_total
        self.last_delivered_jobid = stats.last_delivered_jobid
        self.state_bytes = stats.db_bytes
        self.known_ids = stats.known_ids


_SIZE = 4096
_MAX_ERROR = 1500


def write_health(directory: Path, health: Health, *, path: Path | None = None, mode: int = 0o600) -> bool:
    """Overwrite ``directory``/health.json (or ``path``) with ``health``; False if it could not be
    written. ``mode`` applies when the file is created."""
    report = asdict(health)
    if health.state_error and len(health.state_error) > _MAX_ERROR:
        report["state_error"] = health.state_error[:_MAX_ERROR] + "…"
    data = json.dumps(report).encode()
    data += b" " * (_SIZE - 1 - len(data)) + b"\n"
    try:
        fd = os.open(path or directory / HEALTH_NAME, os.O_WRONLY | os.O_CREAT, mode)
    except OSError:
        return False
    try:
        return os.pwrite(fd, data, 0) == len(data)
    except OSError:
        return False
    finally:
        os.close(fd)


def read_health(directory: Path, *, path: Path | None = None) -> Health | None:
    """The last report (``directory``/health.json, or ``path``), or None if there is none or it
    cannot be read."""
    for _ in range(3):  # a report read while it is being overwritten is read again
        try:
            data = json.loads((path or directory / HEALTH_NAME).read_bytes())
        except OSError:
            return None
        except ValueError:
            continue
        known = {f.name for f in fields(Health)}
        try:
            return Health(**{k: v for k, v in data.items() if k in known})
        except TypeError:
            return None
    return None
