"""Logging: structlog's processor chain rendered as key=value or JSON, to stderr or syslog.

Under systemd, stderr goes to the journal. ``log.target = "syslog"`` sends to the local syslog
socket with ident ``jobcompd`` and the configured facility. librdkafka's own log lines are routed
through the same chain (:func:`librdkafka_logger`).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
import threading
import time
from typing import Any

import structlog

from jobcompd.config import LogSettings

__all__ = ["configure", "librdkafka_logger"]

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


class _SyslogIdent(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"jobcompd[{os.getpid()}]: {record.getMessage()}"


def _handler(settings: LogSettings) -> logging.Handler:
    if settings.target == "syslog":
        # JOBCOMPD_SYSLOG_SOCKET: another local syslog socket (a chroot, a container, the tests).
        socket_path = os.environ.get("JOBCOMPD_SYSLOG_SOCKET", "/dev/log")
        address: str | tuple[str, int] = socket_path
        if not os.path.exists(socket_path):
            address = ("localhost", 514)
        facility = logging.handlers.SysLogHandler.facility_names.get(
            settings.facility, logging.handlers.SysLogHandler.LOG_DAEMON
        )
        handler: logging.Handler = logging.handlers.SysLogHandler(address, facility=facility)
        handler.setFormatter(_SyslogIdent())
        return handler
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def configure(settings: LogSettings | None = None) -> None:
    """(Re)configure logging from ``settings``; safe to call again on reload."""
    settings = settings or LogSettings()
    renderer: structlog.types.Processor
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.processors.KeyValueRenderer(
            key_order=["timestamp", "level", "event"], drop_missing=True
        )
    processors: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.format_exc_info,
    ]
    if settings.target == "stderr":
        processors.insert(0, structlog.processors.TimeStamper(fmt="iso", utc=True))
    processors.append(renderer)
    # What is written is the rendered event alone: where a call was made from, and which thread
    # or process made it, are never shown, so they are not gathered for each line either (the
    # logging HOWTO's "Optimization"); a delivery logged per record (debug_jobcomp) costs less.
    logging._srcfile = None  # type: ignore[attr-defined]
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    root = logging.getLogger("jobcompd")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(_handler(settings))
    root.setLevel(_LEVELS[settings.level])
    root.propagate = False
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )


class Quieter:
    """Repeated events logged once, then counted: a fault costs one line, not one per record.

    :meth:`log` writes the first event of a ``kind`` at once; later ones of the same kind within
    ``interval`` seconds are only counted, and the count is written as one summary line when the
    interval is over (at the next :meth:`log` or :meth:`flush`). Thread-safe.
    """

    def __init__(self, logger: Any, interval: float = 60.0) -> None:
        self._log = logger
        self._interval = interval
        self._lock = threading.Lock()
        # kind -> [level, event, fields, when the window started, events counted since]
        self._kinds: dict[str, list[Any]] = {}

    def log(self, kind: str, level: int, event: str, **fields: Any) -> None:
        """Log ``event`` unless one of ``kind`` was logged within the interval (then count it)."""
        now = time.monotonic()
        with self._lock:
            seen = self._kinds.get(kind)
            if seen is not None and now - seen[3] < self._interval:
                seen[4] += 1
                return
            due = self._due(now)
            self._kinds[kind] = [level, event, fields, now, 0]
        self._summarise(due)
        self._log.log(level, event, **fields)

    def flush(self) -> None:
        """Write the summaries whose interval is over."""
        with self._lock:
            due = self._due(time.monotonic())
        self._summarise(due)

    def _due(self, now: float) -> list[list[Any]]:
        due = []
        for kind, seen in list(self._kinds.items()):
            if now - seen[3] >= self._interval:
                if seen[4]:
                    due.append(seen)
                del self._kinds[kind]
        return due

    def _summarise(self, due: list[list[Any]]) -> None:
        for level, event, fields, _, count in due:
            self._log.log(level, event, **fields, repeated=count, within_s=self._interval)


class _ToStructlog(logging.Handler):
    """Hands librdkafka's log records (via confluent-kafka's ``logger``) to our structlog chain.

    librdkafka repeats a failing connection's lines every reconnect backoff: each distinct line is
    written once a minute with the count of its repeats (`Quieter`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._quiet = Quieter(structlog.get_logger("jobcompd.kafka"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            self._quiet.log(message, record.levelno, "librdkafka", message=message)
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def librdkafka_logger() -> logging.Logger:
    """The stdlib logger for confluent-kafka's ``logger`` setting, rendered like ours."""
    logger = logging.getLogger("jobcompd.librdkafka")
    if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
        logger.addHandler(_ToStructlog())
        logger.propagate = False  # its records reach the output once, through structlog
    return logger
