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


class _ToStructlog(logging.Handler):
    """Hands librdkafka's log records (via confluent-kafka's ``logger``) to our structlog chain."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            structlog.get_logger("jobcompd.kafka").log(
                record.levelno, "librdkafka", message=record.getMessage()
            )
        except Exception:  # pragma: no cover - logging must never raise
            self.handleError(record)


def librdkafka_logger() -> logging.Logger:
    """The stdlib logger for confluent-kafka's ``logger`` setting, rendered like ours."""
    logger = logging.getLogger("jobcompd.librdkafka")
    if not any(isinstance(h, _ToStructlog) for h in logger.handlers):
        logger.addHandler(_ToStructlog())
        logger.propagate = False  # its records reach the output once, through structlog
    return logger
