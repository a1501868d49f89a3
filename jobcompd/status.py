"""``jobcompd status``: a read-only view of the state, usable as a monitoring check.

Exit status follows the monitoring-plugin convention: 0 ok, 1 warning, 2 critical, 3 unknown (the
state cannot be read by this user); the first line is the verdict with performance data after
``|``. Thresholds come from the ``[status]`` section of the configuration. Nothing is written: the
database is opened read-only and the log file is only read.
"""

from __future__ import annotations

import grp
import os
import pwd
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from jobcompd import fastpath
from jobcompd.config import Settings
from jobcompd.health import Health, read_health
from jobcompd.identity import LIVE, fingerprint
from jobcompd.lock import StateDirLock
from jobcompd.logfile import PlainReader, first_line
from jobcompd.state import DB_NAME, State, StateError

__all__ = ["UNKNOWN", "StatusReport", "collect", "from_report", "render", "unknown"]

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
_LAG_SCAN_LIMIT = 256 * 1024 * 1024  # count unread lines in at most this many bytes


@dataclass(slots=True)
class StatusReport:
    """Everything ``status`` found, and the verdict."""

    state_dir: str
    source: str
    daemon_pid: int | None = None
    spool_depth: int = 0
    oldest_pending_age_s: float | None = None
    dead_letters: int = 0
    quarantined: int = 0
    delivered_total: int = 0
    last_delivered_at: float | None = None
    last_delivered_jobid: int | None = None
    file_size: int | None = None
    read_offset: int | None = None
    lag_bytes: int | None = None
    lag_lines: int | None = None
    last_read_at: float | None = None
    daemon_error: str | None = None
    warn_spool: int = 0
    crit_spool: int = 0
    known_ids: int = 0
    state_bytes: int = 0
    reader: str = fastpath.PARSER  # the daemon's record reader (this install's when it has not said)
    problems: list[tuple[int, str]] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return max((level for level, _ in self.problems), default=OK)

    def flag(self, level: int, text: str) -> None:
        self.problems.append((level, text))

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["problems"] = [{"level": _NAMES[lvl], "problem": text} for lvl, text in self.problems]
        d["status"] = _NAMES[self.exit_code]
        return d


def _new_report(settings: Settings) -> StatusReport:
    th = settings.status
    return StatusReport(
        state_dir=str(settings.state.dir),
        source=str(settings.source.path),
        warn_spool=th.warn_spool,
        crit_spool=th.crit_spool,
    )


def collect(settings: Settings) -> StatusReport:
    """Look at the state and the log without changing either."""
    report = _new_report(settings)
    report.daemon_pid = StateDirLock(settings.state.dir).holder()
    if report.daemon_pid is None:
        report.flag(CRITICAL, "no jobcompd is running on this state directory")
    if not (settings.state.dir / DB_NAME).exists():
        report.flag(WARNING, "no state yet: jobcompd has never run with this state.dir")
        return report
    try:
        with State.open(settings.state.dir, readonly=True, verify=False) as state:
            stats = state.stats()
            positions = state.positions()
    except StateError as exc:
        if not os.access(settings.state.dir / DB_NAME, os.R_OK):
            raise PermissionError(13, "Permission denied", str(settings.state.dir / DB_NAME)) from exc
        report.flag(CRITICAL, f"state unreadable: {exc}")
        return report
    now = time.time()
    figures = Health(pid=0, started_at=0.0, last_delivery_at=stats.last_delivered_at)
    figures.take(stats)
    _numbers(report, figures, now)
    _file_lag(report, settings, {p.fingerprint: p for p in positions if p.reader == LIVE})
    if report.daemon_pid is not None:
        _daemon_health(report, settings, now, read_health(settings.state.dir))
    _judge(report, settings)
    return report


def from_report(settings: Settings) -> StatusReport | None:
    """The verdict from the report the daemon writes to ``[status] file`` — for a monitoring
    user who may read that file but not the state — or None if there is no such report."""
    if settings.status.file is None:
        return None
    health = read_health(settings.state.dir, path=settings.status.file)
    if health is None:
        return None
    report = _new_report(settings)
    now = time.time()
    report.daemon_pid = health.pid if _alive(health.pid) else None
    if report.daemon_pid is None:
        report.flag(CRITICAL, f"no jobcompd is running (its last report is from {_when(health.updated_at)})")
    _numbers(report, health, now)
    report.lag_bytes = health.lag_bytes
    if report.daemon_pid is not None:
        _daemon_health(report, settings, now, health)
    _judge(report, settings)
    return report


def _numbers(report: StatusReport, figures: Health, now: float) -> None:
    """The numbers shown, from the state (through :meth:`Health.take`) or the daemon's report."""
    report.spool_depth = figures.spool_depth
    oldest = figures.oldest_pending_at
    report.oldest_pending_age_s = round(now - oldest, 1) if oldest else None
    report.dead_letters = figures.dead_letters
    report.quarantined = figures.quarantined
    report.delivered_total = figures.delivered_total
    report.last_delivered_at = figures.last_delivery_at
    report.last_delivered_jobid = figures.last_delivered_jobid
    report.known_ids = figures.known_ids
    report.state_bytes = figures.state_bytes


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except PermissionError:
        return True  # alive, and another user's
    except OSError:
        return False
    return True


def _judge(report: StatusReport, settings: Settings) -> None:
    """Flag the numbers against the thresholds of ``[status]``."""
    th = settings.status
    for value, warn, crit, what in (
        (report.spool_depth, th.warn_spool, th.crit_spool, "undelivered records in the spool"),
        (report.lag_lines or 0, th.warn_spool, th.crit_spool, "log lines not read yet"),
    ):
        if value >= crit:
            report.flag(CRITICAL, f"{value} {what} (critical at {crit})")
        elif value >= warn:
            report.flag(WARNING, f"{value} {what} (warning at {warn})")
    age = report.oldest_pending_age_s
    if age is not None:
        if age >= th.crit_age_s:
            report.flag(CRITICAL, f"oldest undelivered record waits since {age:.0f} s")
        elif age >= th.warn_age_s:
            report.flag(WARNING, f"oldest undelivered record waits since {age:.0f} s")
    if report.dead_letters:
        report.flag(WARNING, f"{report.dead_letters} dead letter(s): jobcompd deadletter list")
    if report.quarantined:
        report.flag(WARNING, f"{report.quarantined} quarantined line(s) (malformed input)")


def _daemon_health(report: StatusReport, settings: Settings, now: float, health: Health | None) -> None:
    """What the running daemon says of itself: an error it is stuck on, or a stall."""
    stall = settings.status.stall_s
    if health is None or health.pid != report.daemon_pid:
        report.flag(WARNING, "the daemon has not reported its health yet")
        return
    report.last_read_at = health.last_read_at
    report.reader = health.reader or report.reader
    report.daemon_error = health.state_error
    silent = now - health.updated_at
    if silent >= stall:
        report.flag(
            CRITICAL,
            f"the daemon has not reported for {silent:.0f} s: it is stuck, or cannot write to "
            f"{settings.state.dir} (full disk?)",
        )
    if health.state_error:
        since = now - (health.state_error_since or now)
        report.flag(CRITICAL, f"the daemon cannot write its state (for {since:.0f} s): {health.state_error}")
    if health.source_error:
        report.flag(CRITICAL, f"the daemon cannot read the log {settings.source.path}: {health.source_error}")
    if health.brokers_down_since is not None:
        down = now - health.brokers_down_since
        level = CRITICAL if down >= stall else WARNING
        report.flag(level, f"no Kafka broker reachable for {down:.0f} s (critical at {stall} s)")
    if report.lag_bytes:
        last = health.last_read_at or health.started_at
        if now - last >= stall:
            report.flag(
                CRITICAL,
                f"{report.lag_bytes} byte(s) of the log unread and nothing read for {now - last:.0f} s",
            )


def unknown(settings: Settings, exc: OSError) -> str:
    """The one line ``status`` prints when it cannot look: what, why, and how to let it."""
    where = exc.filename or settings.state.dir
    if isinstance(exc, PermissionError):
        directory = settings.state.dir
        try:
            owner = directory.stat()
            who = f"{pwd.getpwuid(owner.st_uid).pw_name}:{grp.getgrgid(owner.st_gid).gr_name}"
        except (OSError, KeyError):
            who = "the service user"
        return (
            f"jobcompd UNKNOWN: cannot read {where}: permission denied; run status as root or as "
            f"the service user ({who} owns {directory})"
        )
    return f"jobcompd UNKNOWN: cannot read {where}: {exc.strerror or exc}"


def _file_lag(report: StatusReport, settings: Settings, by_fp: dict[str, Any]) -> None:
    path = settings.source.path
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            limit = settings.source.max_line_bytes
            first = first_line(PlainReader(fh.fileno()), limit + 1, final=False)
            report.file_size = size
            if first is None:
                return  # no complete line yet: nothing to read
            known = by_fp.get(fingerprint(first, limit))
            offset = known.offset if known is not None else 0
            report.read_offset = offset
            report.lag_bytes = max(0, size - offset)
            if size - offset > _LAG_SCAN_LIMIT:
                return
            fh.seek(offset)
            report.lag_lines = fh.read(size - offset).count(b"\n")
    except FileNotFoundError:
        report.flag(WARNING, f"log file {path} does not exist (yet)")
    except OSError as exc:
        report.flag(CRITICAL, f"cannot read the log file {path}: {exc.strerror}")


def _when(epoch: float | None) -> str:
    if not epoch:
        return "never"
    ago = time.time() - epoch
    return f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(epoch))} ({ago:.0f} s ago)"


def perfdata(r: StatusReport) -> str:
    """Nagios performance data: ``label=value[;warn;crit]`` words."""
    age = r.oldest_pending_age_s or 0
    spool = f"spool={r.spool_depth}" + (f";{r.warn_spool};{r.crit_spool}" if r.warn_spool else "")
    return (
        f"{spool} lag_bytes={r.lag_bytes or 0}B dead_letters={r.dead_letters} "
        f"quarantined={r.quarantined} oldest_undelivered_s={age:.0f}s"
    )


def render(r: StatusReport) -> str:
    """The human-readable report."""
    lag = "unknown"
    if r.lag_bytes is not None:
        lines = f", {r.lag_lines} line(s)" if r.lag_lines is not None else ""
        lag = f"{r.lag_bytes} byte(s){lines} (read {r.read_offset} of {r.file_size})"
    oldest = f"{r.oldest_pending_age_s:.0f} s" if r.oldest_pending_age_s is not None else "-"
    rows = [
        f"jobcompd {_NAMES[r.exit_code]}"
        + (f": {r.problems[0][1]}" if r.problems else "")
        + f" | {perfdata(r)}",
        f"daemon:          {'running, pid ' + str(r.daemon_pid) if r.daemon_pid else 'not running'}",
        f"source:          {r.source}",
        f"lag:             {lag}",
        f"spool:           {r.spool_depth} undelivered, oldest waiting {oldest}",
        f"dead letters:    {r.dead_letters}",
        f"quarantined:     {r.quarantined}",
        f"delivered:       {r.delivered_total} in total, last {_when(r.last_delivered_at)}"
        + (f", job {r.last_delivered_jobid}" if r.last_delivered_jobid is not None else ""),
        f"last read:       {_when(r.last_read_at)}",
        f"reader:          {r.reader}",
        f"state dir:       {r.state_dir} ({r.state_bytes / 1e6:.1f} MB, ~{r.known_ids} known record ids)",
    ]
    rows += [f"{_NAMES[level]}: {text}" for level, text in r.problems]
    return "\n".join(rows)
