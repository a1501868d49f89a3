"""The validated settings jobcompd runs with: one frozen value per section, and what they default to."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo

from jobcompd.config.secrets import is_secret
from jobcompd.record import DEFAULT_MAX_LINE_BYTES
from jobcompd.zone import Zone

DEFAULT_CONFIG_PATH = "/etc/jobcompd/jobcompd.toml"

CONFIG_ENV_VAR = "JOBCOMPD_CONFIG"

DEFAULT_RDKAFKA_CONF = "/etc/jobcompd/rdkafka.conf"

DEFAULT_SOURCE_PATH = "/var/log/slurm_jobcomp.log"  # also Slurm's default JobCompLoc for filetxt

DEFAULT_STATE_DIR = "/var/lib/jobcompd"

REDACTED = "***"
DEFAULT_MAX_SPOOL_RECORDS = 1_000_000  # past this many undelivered records, reading pauses

_SECTIONS: dict[str, tuple[str, ...]] = {
    "source": ("path", "timezone", "start_at", "poll", "max_line_bytes", "parse_worker"),
    "kafka": ("rdkafka_conf", "params", "properties", "partitioning"),
    "state": ("dir", "synchronous", "max_spool_records", "known_ids_days"),
    "log": ("level", "format", "target", "facility", "debug_jobcomp"),
    "status": ("warn_spool", "crit_spool", "warn_age_s", "crit_age_s", "stall_s", "file"),
    "metrics": ("listen", "textfile"),
}

_TOP_LEVEL = ("slurm_conf", *_SECTIONS)


@dataclass(frozen=True)
class ConfigProblem:
    """One thing wrong with the configuration: the file, where in it, and why.

    ``where`` is a TOML key (``kafka.params``), a line (``line 7``) or a property name, or empty
    when the whole file is concerned.
    """

    source: str
    where: str
    reason: str

    def __str__(self) -> str:
        return ": ".join(part for part in (self.source, self.where, self.reason) if part)


class ConfigError(Exception):
    """The configuration cannot be used.

    ``problems`` lists every problem found, not only the first; ``warnings`` holds the
    non-fatal notes gathered on the way, for a ``check-config`` that wants to show both.
    """

    def __init__(self, problems: list[ConfigProblem], warnings: tuple[str, ...] = ()) -> None:
        self.problems = list(problems)
        self.warnings = tuple(warnings)
        super().__init__("\n".join(str(problem) for problem in self.problems))


@dataclass(frozen=True)
class JobCompParams:
    """The jobcomp/kafka plugin's ``JobCompParams`` that mean something to jobcompd.

    ``flush_timeout`` is in milliseconds (-1: wait forever, 0: do not wait); ``poll_interval``
    in seconds; ``topic`` is None when ``topic=`` was not given (the plugin then uses
    ClusterName, as does `KafkaSettings.topic`).
    """

    flush_timeout: int = 500
    poll_interval: int = 2
    requeue_on_msg_timeout: bool = False
    topic: str | None = None


@dataclass(frozen=True)
class SlurmConf:
    """The few slurm.conf values jobcompd uses; None where the file does not set them.

    ``cluster_name`` is lower-cased, as slurmctld does before using it.
    """

    path: Path
    cluster_name: str | None = None
    job_comp_type: str | None = None
    job_comp_loc: str | None = None
    state_save_location: str | None = None


@dataclass(frozen=True)
class SourceSettings:
    """The jobcomp/filetxt log and how to read it; ``zone`` is the zone its times are in."""

    path: Path
    zone: Zone
    start_at: Literal["beginning", "end"] = "beginning"
    poll: bool = False
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    # true: a worker process; false: none; "auto": a thread (compiled reader), a process (Python's)
    parse_worker: bool | Literal["auto"] = "auto"

    @property
    def timezone(self) -> str:
        """The zone's IANA name, or ``"localtime"`` (see :mod:`jobcompd.zone`)."""
        return self.zone.name

    @property
    def tz(self) -> ZoneInfo:
        """The zone as a tzinfo."""
        return self.zone.tz


def librdkafka_true(value: object) -> bool:
    """A boolean librdkafka property's value, read as librdkafka reads it."""
    return str(value).lower() in ("true", "t", "1")


@dataclass(frozen=True)
class KafkaSettings:
    """Where and how records are produced.

    ``properties`` is the ordered, read-only mapping of librdkafka properties (file, then
    ``[kafka.properties]``, then jobcompd's defaults), already accepted by librdkafka; pass
    `producer_config()` to ``confluent_kafka.Producer``, which wants a real dict.
    """

    topic: str
    properties: Mapping[str, str]
    params: JobCompParams = JobCompParams()
    rdkafka_conf: Path | None = None
    # "sticky": one partition for a while, then another, as librdkafka does for records without a
    # key (the plugin's); "key": a record's partition follows from its key (librdkafka's partitioner).
    partitioning: Literal["key", "sticky"] = "sticky"

    def __post_init__(self) -> None:
        if not isinstance(self.properties, MappingProxyType):
            object.__setattr__(self, "properties", MappingProxyType(dict(self.properties)))

    def producer_config(self) -> dict[str, str]:
        """A fresh, mutable copy of ``properties``, in order, for ``confluent_kafka.Producer``."""
        return dict(self.properties)

    @property
    def idempotent(self) -> bool:
        """Whether the producer is idempotent: it sends nothing before a broker gives it an id."""
        return librdkafka_true(self.properties.get("enable.idempotence", "false"))


@dataclass(frozen=True)
class StateSettings:
    """The SQLite spool: where it lives, how hard it syncs, when reading stops, and how long the
    ids of delivered records are kept (to recognise a log read again)."""

    dir: Path
    synchronous: Literal["full", "normal"] = "full"
    max_spool_records: int = DEFAULT_MAX_SPOOL_RECORDS
    known_ids_days: float = 400.0  # ids of records read longer ago are forgotten; 0: never


@dataclass(frozen=True)
class LogSettings:
    """jobcompd's own logging."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["kv", "json"] = "kv"
    target: Literal["stderr", "syslog"] = "stderr"
    facility: str = "daemon"
    debug_jobcomp: bool = False


@dataclass(frozen=True)
class StatusThresholds:
    """Spool size and age (seconds) at which ``jobcompd status`` reports warning or critical, and
    how long the daemon may read nothing while the log has unread lines (or not report at all)."""

    warn_spool: int = 10_000
    crit_spool: int = 100_000
    warn_age_s: int = 300
    crit_age_s: int = 3600
    stall_s: int = 120
    file: Path | None = None  # the daemon's report, readable by the monitoring group


@dataclass(frozen=True)
class MetricsSettings:
    """Prometheus metrics: an HTTP endpoint (``listen`` host and port) and/or a file for
    node_exporter's textfile collector; both off when unset."""

    host: str | None = None
    port: int | None = None
    textfile: Path | None = None


@dataclass(frozen=True)
class Settings:
    """Everything jobcompd needs to run, validated; built once by `load_settings`.

    ``cluster`` is slurm.conf's ClusterName (None without one); ``warnings`` are the non-fatal
    notes, each formatted like a `ConfigProblem`.
    """

    config_path: Path
    source: SourceSettings
    kafka: KafkaSettings
    state: StateSettings
    log: LogSettings = LogSettings()
    status: StatusThresholds = StatusThresholds()
    metrics: MetricsSettings = MetricsSettings()
    cluster: str | None = None
    slurm: SlurmConf | None = None
    warnings: tuple[str, ...] = ()


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain nested dicts, secrets replaced by ``"***"``.

    Derived from the settings' fields (a new field shows without a change here). Meant for
    ``jobcompd check-config`` to print (JSON- and TOML-friendly: strings, numbers, booleans,
    None, lists).
    """
    view = _plain(settings)
    view["slurm"] = str(settings.slurm.path) if settings.slurm else None
    return view


def _plain(value: Any) -> Any:
    if isinstance(value, Zone):
        return value.name
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(k): REDACTED if is_secret(str(k)) else _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value
