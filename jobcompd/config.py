"""jobcompd's settings: one TOML file, and the files it names, into one frozen `Settings`.

Where a value comes from, highest precedence first:

1. ``jobcompd.toml``: the path given to `load_settings`, else ``$JOBCOMPD_CONFIG``, else
   `DEFAULT_CONFIG_PATH`;
2. ``slurm.conf``, when the top-level ``slurm_conf`` key names it: ``ClusterName`` (default topic
   and cluster name), ``JobCompType``/``JobCompLoc`` (default ``source.path``) and
   ``StateSaveLocation`` (default ``state.dir``);
3. built-in defaults.

The librdkafka properties file (``kafka.rdkafka_conf``) and ``kafka.params`` are read the way the
jobcomp/kafka plugin reads its ``JobCompLoc`` file and ``JobCompParams``, so a site's plugin
configuration can be reused as it is; every librdkafka property goes through the bundled
librdkafka's own ``rd_kafka_conf_set()``.

Nothing here logs, caches or keeps state: `load_settings` reads files and returns a value, or
raises `ConfigError` carrying every problem it found. A reload is just another call.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import stat
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, TypeVar, cast
from zoneinfo import ZoneInfo

from jobcompd import _librdkafka
from jobcompd.zone import TimeZoneError, Zone
from jobcompd.zone import resolve as resolve_zone

__all__ = [
    "CONFIG_ENV_VAR",
    "DEFAULT_CONFIG_PATH",
    "DEFAULT_RDKAFKA_CONF",
    "REDACTED",
    "ConfigError",
    "ConfigProblem",
    "JobCompParams",
    "KafkaSettings",
    "LogSettings",
    "MetricsSettings",
    "Settings",
    "SlurmConf",
    "SourceSettings",
    "StateSettings",
    "StatusThresholds",
    "is_secret",
    "load_settings",
    "parse_jobcomp_params",
    "redacted",
    "resolve_config_path",
]

DEFAULT_CONFIG_PATH = "/etc/jobcompd/jobcompd.toml"
CONFIG_ENV_VAR = "JOBCOMPD_CONFIG"
DEFAULT_RDKAFKA_CONF = "/etc/jobcompd/rdkafka.conf"
DEFAULT_SOURCE_PATH = "/var/log/slurm_jobcomp.log"  # also Slurm's default JobCompLoc for filetxt
DEFAULT_STATE_DIR = "/var/lib/jobcompd"
REDACTED = "***"

# A property whose name holds one of these — or a word within a typo of one — may hold a secret.
_SECRET_MARKERS = (
    "password", "passwd", "secret", "token", "credential", "oauth", "sasl", "key", "pem", "jaas",
)
_SECRET_WORDS = ("password", "passwd", "secret", "token", "credential", "credentials", "oauthbearer")
_TYPO_RATIO = 0.8
# Named like a secret, but what they hold helps an operator and protects nothing.
_NOT_SECRET = frozenset(
    ("sasl.mechanism", "sasl.mechanisms", "sasl.username", "sasl.kerberos.service.name",
     "sasl.kerberos.principal")
)

_INT32_MAX = 2**31 - 1
_WHITESPACE = " \t\n\v\f\r"  # C isspace(), what Slurm's xstrtrim() removes
_TOPIC_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_SYSLOG_FACILITIES = frozenset(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron")
    + ("authpriv", "ftp", *(f"local{n}" for n in range(8)))
)

_SECTIONS: dict[str, tuple[str, ...]] = {
    "source": ("path", "timezone", "start_at", "poll", "max_line_bytes", "parse_worker"),
    "kafka": ("rdkafka_conf", "params", "properties"),
    "state": ("dir", "synchronous", "max_spool_records", "known_ids_days"),
    "log": ("level", "format", "target", "facility", "debug_jobcomp"),
    "status": ("warn_spool", "crit_spool", "warn_age_s", "crit_age_s", "stall_s", "file"),
    "metrics": ("listen", "textfile"),
}
_TOP_LEVEL = ("slurm_conf", *_SECTIONS)


# --- values -------------------------------------------------------------------------------------


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
    max_line_bytes: int = 65536
    parse_worker: bool = True

    @property
    def timezone(self) -> str:
        """The zone's IANA name, or ``"localtime"`` (see :mod:`jobcompd.zone`)."""
        return self.zone.name

    @property
    def tz(self) -> ZoneInfo:
        """The zone as a tzinfo."""
        return self.zone.tz


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

    def __post_init__(self) -> None:
        if not isinstance(self.properties, MappingProxyType):
            object.__setattr__(self, "properties", MappingProxyType(dict(self.properties)))

    def producer_config(self) -> dict[str, str]:
        """A fresh, mutable copy of ``properties``, in order, for ``confluent_kafka.Producer``."""
        return dict(self.properties)


@dataclass(frozen=True)
class StateSettings:
    """The SQLite spool: where it lives, how hard it syncs, when reading stops, and how long the
    ids of delivered records are kept (to recognise a log read again)."""

    dir: Path
    synchronous: Literal["full", "normal"] = "full"
    max_spool_records: int = 1_000_000
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


# --- public functions ---------------------------------------------------------------------------


def resolve_config_path(
    path: str | os.PathLike[str] | None = None, environ: Mapping[str, str] | None = None
) -> Path:
    """The configuration file to read: ``path`` if given, else ``$JOBCOMPD_CONFIG``, else the default.

    The result is absolute, so a later reload finds the same file after the daemon changed
    directory.
    """
    env = os.environ if environ is None else environ
    chosen = path if path is not None else (env.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_PATH)
    return Path(os.path.abspath(chosen))


def load_settings(
    path: str | os.PathLike[str] | None = None, *, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read and validate the configuration; return the `Settings` or raise `ConfigError`.

    ``path`` defaults to ``$JOBCOMPD_CONFIG``, then to `DEFAULT_CONFIG_PATH`. ``environ``
    (default ``os.environ``) is consulted for that variable and for ``TZ`` when
    ``source.timezone`` is not set. Relative paths in the file are taken relative to the
    file's directory.

    Without ``source.timezone`` (or with ``"localtime"``) the system zone is named from ``TZ``,
    else from where /etc/localtime links into a zoneinfo tree, else from /etc/timezone; when
    none of them gives an IANA name, ``timezone`` is ``"localtime"`` and ``tz`` is read from
    /etc/localtime itself.

    Every problem in every file is collected before raising. The function only reads files: it
    does not log, and it keeps nothing between calls.
    """
    env = os.environ if environ is None else environ
    config_path = resolve_config_path(path, env)
    source = str(config_path)
    try:
        text = config_path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError([ConfigProblem(source, "", f"cannot read: {_os_reason(exc)}")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigProblem(source, "", f"not UTF-8 text: {exc}")]) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where, reason = _toml_error(exc)
        raise ConfigError([ConfigProblem(source, where, reason)]) from None
    return _Builder(config_path, env).build(document)


def parse_jobcomp_params(text: str) -> tuple[JobCompParams, list[str], list[str]]:
    """Parse a ``JobCompParams`` string; return the params, the errors and the warnings.

    Comma separated items, whitespace around them ignored, names case-insensitive (values kept
    as written). An unknown name or one that has no effect in jobcompd is a warning; a bad
    value of a known name is an error. When a name is given twice the first one applies, as in
    the plugin (which finds it with ``strstr()``).
    """
    errors: list[str] = []
    warnings: list[str] = []
    values: dict[str, str] = {}
    flags: set[str] = set()
    for raw in text.split(","):
        item = raw.strip(_WHITESPACE)
        if not item:
            continue
        name, sep, value = item.partition("=")
        word = name.strip(_WHITESPACE).lower()
        value = value.strip(_WHITESPACE)
        if word in _PARAM_VALUED:
            if not sep:
                errors.append(f"{word} needs a value: {word}={_PARAM_VALUED[word]}")
            elif word in values:
                warnings.append(
                    f"{word} is given more than once; the first, {word}={values[word]}, applies"
                )
            else:
                values[word] = value
        elif word in _PARAM_FLAGS:
            if sep:
                errors.append(f"{item}: {word} is a flag, it takes no value")
            else:
                flags.add(word)
        else:
            hint = _did_you_mean(word, [*_PARAM_VALUED, *_PARAM_FLAGS])
            warnings.append(f"unknown parameter {item!r} is ignored{hint}")
            continue
        if word in _PARAM_NO_EFFECT:
            warnings.append(f"{word} has no effect in jobcompd: {_PARAM_NO_EFFECT[word]}")

    flush_timeout = _int_param(
        values,
        "flush_timeout",
        500,
        -1,
        errors,
        "-1 (wait forever), 0 (do not wait) or milliseconds",
    )
    poll_interval = _int_param(values, "poll_interval", 2, 0, errors, "seconds, 0 or more")
    if poll_interval == 0 and "poll_interval" in values:
        warnings.append("poll_interval=0 serves delivery reports without pausing (busy loop)")
    topic = values.get("topic")
    if topic is not None and not _TOPIC_NAME.fullmatch(topic):
        errors.append(f"topic={topic} {_BAD_TOPIC}" if topic else "topic= needs a topic name")
        topic = None
    params = JobCompParams(
        flush_timeout=flush_timeout,
        poll_interval=poll_interval,
        requeue_on_msg_timeout="requeue_on_msg_timeout" in flags,
        topic=topic,
    )
    return params, errors, warnings


def is_secret(key: str) -> bool:
    """Whether a librdkafka property may hold a secret, so that its value is never printed.

    Names are matched loosely on purpose: a misspelt ``sasl.pasword`` is refused by librdkafka,
    and its value must not appear in the error that says so.
    """
    lowered = key.lower()
    if lowered in _NOT_SECRET:
        return False
    if any(marker in lowered for marker in _SECRET_MARKERS):
        return True
    words = re.split(r"[._\-]+", lowered)
    return any(
        len(word) >= 4 and difflib.SequenceMatcher(None, word, secret).ratio() >= _TYPO_RATIO
        for word in words
        for secret in _SECRET_WORDS
    )


def redacted(settings: Settings) -> dict[str, Any]:
    """The effective settings as plain nested dicts, secrets replaced by ``"***"``.

    Meant for ``jobcompd check-config`` to print (JSON- and TOML-friendly: strings, numbers,
    booleans, None, lists).
    """
    kafka = settings.kafka
    return {
        "config_path": str(settings.config_path),
        "slurm_conf": str(settings.slurm.path) if settings.slurm else None,
        "cluster": settings.cluster,
        "source": {
            "path": str(settings.source.path),
            "timezone": settings.source.timezone,
            "start_at": settings.source.start_at,
            "poll": settings.source.poll,
            "max_line_bytes": settings.source.max_line_bytes,
            "parse_worker": settings.source.parse_worker,
        },
        "kafka": {
            "topic": kafka.topic,
            "rdkafka_conf": str(kafka.rdkafka_conf) if kafka.rdkafka_conf else None,
            "params": dataclasses.asdict(kafka.params),
            "properties": {
                key: REDACTED if is_secret(key) else value
                for key, value in kafka.properties.items()
            },
        },
        "state": {
            "dir": str(settings.state.dir),
            "synchronous": settings.state.synchronous,
            "max_spool_records": settings.state.max_spool_records,
            "known_ids_days": settings.state.known_ids_days,
        },
        "log": dataclasses.asdict(settings.log),
        "status": {
            **dataclasses.asdict(settings.status),
            "file": str(settings.status.file) if settings.status.file else None,
        },
        "metrics": {
            "listen": f"{settings.metrics.host}:{settings.metrics.port}" if settings.metrics.port else None,
            "textfile": str(settings.metrics.textfile) if settings.metrics.textfile else None,
        },
        "warnings": list(settings.warnings),
    }


# --- JobCompParams vocabulary -------------------------------------------------------------------

_PARAM_VALUED = {
    "flush_timeout": "<milliseconds>",
    "poll_interval": "<seconds>",
    "topic": "<name>",
    "topic_job_start": "<name>",
}
_PARAM_FLAGS = (
    "requeue_on_msg_timeout",
    "enable_job_start",
    "purge_in_flight",
    "purge_non_blocking",
    "requeue_purge_in_flight",
    "send_comment",
    "send_script",
)
_NO_JOB_START = (
    "jobcomp/filetxt writes nothing when a job starts, so there are no job-start events to send"
)
_NO_PURGE = (
    "jobcompd never purges at shutdown; records Kafka has not acknowledged stay in its spool "
    "and are sent again after a restart"
)
_NO_COMMENT_SCRIPT = "the jobcomp/filetxt line carries neither the job's comment nor its script"
_PARAM_NO_EFFECT = {
    "topic_job_start": _NO_JOB_START,
    "enable_job_start": _NO_JOB_START,
    "purge_in_flight": _NO_PURGE,
    "purge_non_blocking": _NO_PURGE,
    "requeue_purge_in_flight": _NO_PURGE,
    "send_comment": _NO_COMMENT_SCRIPT,
    "send_script": _NO_COMMENT_SCRIPT,
}
_BAD_TOPIC = "is not a valid Kafka topic name (letters, digits, '.', '_', '-'; at most 249)"


def _int_param(
    values: dict[str, str], word: str, default: int, low: int, errors: list[str], meaning: str
) -> int:
    if word not in values:
        return default
    text = values[word]
    if not re.fullmatch(r"[+-]?[0-9]+", text):
        errors.append(f"{word}={text} is not an integer")
        return default
    number = int(text)
    if not low <= number <= _INT32_MAX:
        errors.append(f"{word}={text} is out of range: {meaning}")
        return default
    return number


# --- librdkafka properties ----------------------------------------------------------------------

_BOOTSTRAP = ("bootstrap.servers", "metadata.broker.list")
_ACKS = ("acks", "request.required.acks")
_IDEMPOTENCE = ("enable.idempotence",)
_RETRIES = ("retries", "message.send.max.retries")
_MAX_IN_FLIGHT = ("max.in.flight", "max.in.flight.requests.per.connection")
_QUEUING_STRATEGY = ("queuing.strategy",)
_WEAKER = "the no-loss/no-duplicate promise is weaker"


@dataclass(frozen=True)
class _Property:
    key: str
    value: str
    source: str
    where: str

    def shown(self) -> str:
        return f"{self.key}={REDACTED if is_secret(self.key) else self.value}"

    def origin(self) -> str:
        return f"{self.source}: {self.where}" if self.where else self.source


def _parse_properties(text: str, source: str) -> tuple[list[_Property], list[int]]:
    """The plugin's JobCompLoc grammar; also the numbers of non-blank lines it ignores."""
    found: list[_Property] = []
    ignored: list[int] = []
    for lineno, line in enumerate(text.split("\n"), start=1):
        key, sep, rest = line.partition("=")
        if not sep:
            stripped = line.strip(_WHITESPACE)
            if stripped and not stripped.startswith("#"):
                ignored.append(lineno)
            continue
        if "#" in key:
            continue
        value = rest.partition("#")[0]
        found.append(
            _Property(key.strip(_WHITESPACE), value.strip(_WHITESPACE), source, f"line {lineno}")
        )
    return found, ignored


def _last_of(props: dict[str, _Property], names: tuple[str, ...]) -> _Property | None:
    """The one of several alias names that librdkafka applies last, as the dict is in order."""
    last = None
    for key, prop in props.items():
        if key in names:
            last = prop
    return last


def _is_true(value: str) -> bool:
    return value.lower() in ("true", "t", "1")


def _acks_all(value: str) -> bool:
    return value.lower() in ("all", "-1")


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


# --- slurm.conf ---------------------------------------------------------------------------------

_SLURM_PAIR = re.compile(r'([A-Za-z0-9_.]+)\s*=\s*(?:"([^"]*)"|(\S*))')
_SLURM_INCLUDE = re.compile(r"\s*include\s+(\S.*)", re.IGNORECASE)
_SLURM_RECORDS = frozenset({"nodename", "partitionname", "nodeset", "downnodes", "frontendname"})
_SLURM_WANTED = {
    "clustername": "cluster_name",
    "jobcomptype": "job_comp_type",
    "jobcomploc": "job_comp_loc",
    "statesavelocation": "state_save_location",
}


def _slurm_lines(text: str) -> Iterator[tuple[int, str]]:
    """Logical lines with their first line number: comments cut, backslash continuations joined."""
    pending = ""
    start = 0
    for lineno, line in enumerate(text.split("\n"), start=1):
        if not pending:
            start = lineno
        cut = re.search(r"(?<!\\)#", line)
        line = (line[: cut.start()] if cut else line).replace("\\#", "#").rstrip(_WHITESPACE)
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        yield start, pending + line
        pending = ""
    if pending:
        yield start, pending


def _parse_slurm_conf(text: str, path: Path) -> tuple[SlurmConf, list[tuple[str, str]]]:
    """The values jobcompd wants, and notes (where, reason) about what was not read."""
    found: dict[str, str] = {}
    notes: list[tuple[str, str]] = []
    for lineno, line in _slurm_lines(text):
        include = _SLURM_INCLUDE.fullmatch(line)
        if include:
            reason = (
                f"Include {include.group(1).strip()} is not read; if it sets ClusterName, "
                "JobCompType, JobCompLoc or StateSaveLocation, set the jobcompd.toml "
                "equivalents instead"
            )
            notes.append((f"line {lineno}", reason))
            continue
        pairs = [
            (m.group(1), m.group(2) if m.group(2) is not None else m.group(3))
            for m in _SLURM_PAIR.finditer(line)
        ]
        if not pairs or pairs[0][0].lower() in _SLURM_RECORDS:
            continue
        for key, value in pairs:
            name = _SLURM_WANTED.get(key.lower())
            if name is not None:
                found[name] = value.strip(_WHITESPACE)
    values: dict[str, str | None] = {name: (found.get(name) or None) for name in found}
    if values.get("cluster_name"):
        values["cluster_name"] = cast(str, values["cluster_name"]).lower()
    return SlurmConf(path=path, **values), notes


# --- building -----------------------------------------------------------------------------------

_T = TypeVar("_T")
_TYPE_NAMES: dict[type, str] = {
    str: "a string",
    bool: "a boolean (true or false)",
    int: "an integer",
    dict: "a table",
}


def _toml_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    for kind, name in (
        (str, "string"),
        (int, "integer"),
        (float, "float"),
        (list, "array"),
        (dict, "table"),
    ):
        if isinstance(value, kind):
            return name
    return "date/time"


def _toml_error(exc: tomllib.TOMLDecodeError) -> tuple[str, str]:
    match = re.fullmatch(r"(.*) \(at line (\d+), column (\d+)\)", str(exc), re.DOTALL)
    if match is None:
        return "", f"not valid TOML: {exc}"
    return f"line {match.group(2)}", f"not valid TOML: {match.group(1)} (column {match.group(3)})"


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)


def _did_you_mean(word: str, known: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _flatten(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``bootstrap.servers = "x"`` in TOML is a nested table; librdkafka wants the dotted name."""
    for key, value in table.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


class _Builder:
    """One `load_settings` call: the document, what was found wrong, and what to warn about."""

    def __init__(self, config_path: Path, environ: Mapping[str, str]) -> None:
        self.path = config_path
        self.src = str(config_path)
        self.base = config_path.parent
        self.environ = environ
        self.problems: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    def error(self, where: str, reason: str, source: str | None = None) -> None:
        self.problems.append(ConfigProblem(self.src if source is None else source, where, reason))

    def warn(self, where: str, reason: str, source: str | None = None) -> None:
        self.warnings.append(ConfigProblem(self.src if source is None else source, where, reason))

    def build(self, document: dict[str, Any]) -> Settings:
        tables = self._tables(document)
        slurm = self._slurm(document)
        source = self._source(tables["source"], slurm)
        kafka = self._kafka(tables["kafka"], slurm)
        state = self._state(tables["state"], slurm)
        log = self._log(tables["log"])
        status = self._status(tables["status"])
        metrics = self._metrics(tables["metrics"])
        warnings = tuple(str(warning) for warning in self.warnings)
        if self.problems:
            raise ConfigError(self.problems, warnings)
        assert source is not None and kafka is not None
        return Settings(
            config_path=self.path,
            source=source,
            kafka=kafka,
            state=state,
            log=log,
            status=status,
            metrics=metrics,
            cluster=slurm.cluster_name if slurm else None,
            slurm=slurm,
            warnings=warnings,
        )

    # typed access ------------------------------------------------------------------------------

    def _get(self, table: dict[str, Any], section: str, key: str, kind: type[_T]) -> _T | None:
        """The value if present and of the right TOML type; None (and a problem) otherwise."""
        if key not in table:
            return None
        value = table[key]
        if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
            return value
        self.error(
            f"{section}.{key}" if section else key,
            f"expected {_TYPE_NAMES[kind]}, got {_toml_type(value)} {value!r}",
        )
        return None

    def _choice(
        self, table: dict[str, Any], section: str, key: str, choices: tuple[str, ...], default: str
    ) -> str:
        value = self._get(table, section, key, str)
        if value is None:
            return default
        if value.lower() not in choices:
            self.error(f"{section}.{key}", f"{value!r} is not one of: {', '.join(choices)}")
            return default
        return value.lower()

    def _count(self, table: dict[str, Any], section: str, key: str, default: int, low: int) -> int:
        value = self._get(table, section, key, int)
        if value is None:
            return default
        if value < low:
            self.error(f"{section}.{key}", f"{value} is below the minimum, {low}")
            return default
        return value

    def _path(self, value: str) -> Path:
        return Path(os.path.normpath(self.base / value))

    # sections ----------------------------------------------------------------------------------

    def _tables(self, document: dict[str, Any]) -> dict[str, dict[str, Any]]:
        for key in document:
            if key not in _TOP_LEVEL:
                self.error(key, "unknown key" + _did_you_mean(key, _TOP_LEVEL))
        tables: dict[str, dict[str, Any]] = {}
        for section, known in _SECTIONS.items():
            table = self._get(document, "", section, dict) or {}
            for key in table:
                if key not in known:
                    self.error(f"{section}.{key}", "unknown key" + _did_you_mean(key, known))
            tables[section] = table
        return tables

    def _slurm(self, document: dict[str, Any]) -> SlurmConf | None:
        name = self._get(document, "", "slurm_conf", str)
        if not name:
            return None
        path = self._path(name)
        try:
            text = path.read_bytes().decode("utf-8", errors="replace")
        except OSError as exc:
            self.error("slurm_conf", f"cannot read {path}: {_os_reason(exc)}")
            return None
        slurm, notes = _parse_slurm_conf(text, path)
        for where, reason in notes:
            self.warn(where, reason, source=str(path))
        return slurm

    def _source(self, table: dict[str, Any], slurm: SlurmConf | None) -> SourceSettings | None:
        explicit = self._get(table, "source", "path", str)
        path = self._source_path(explicit, slurm)
        zone = self._timezone(self._get(table, "source", "timezone", str))
        start_at = self._choice(table, "source", "start_at", ("beginning", "end"), "beginning")
        poll = self._get(table, "source", "poll", bool)
        max_line_bytes = self._count(table, "source", "max_line_bytes", 65536, 1)
        parse_worker = self._get(table, "source", "parse_worker", bool)
        if zone is None:
            return None
        return SourceSettings(
            path=path,
            zone=zone,
            start_at=cast(Literal["beginning", "end"], start_at),
            poll=bool(poll),
            max_line_bytes=max_line_bytes,
            parse_worker=parse_worker is not False,
        )

    def _source_path(self, explicit: str | None, slurm: SlurmConf | None) -> Path:
        filetxt = slurm is not None and (slurm.job_comp_type or "").lower() == "jobcomp/filetxt"
        slurm_loc = (slurm.job_comp_loc or DEFAULT_SOURCE_PATH) if slurm and filetxt else None
        if explicit:
            path = self._path(explicit)
            if slurm_loc is not None and Path(slurm_loc) != path:
                self.warn(
                    "source.path",
                    f"{path} differs from slurm.conf's JobCompLoc={slurm_loc}; reading {path}",
                )
            return path
        if slurm is not None and not filetxt:
            kind = slurm.job_comp_type or "jobcomp/none (no JobCompType)"
            self.warn(
                "source.path",
                f"slurm.conf {slurm.path} has JobCompType={kind}, so "
                f"slurmctld writes no filetxt log; reading {DEFAULT_SOURCE_PATH} anyway",
            )
        return Path(slurm_loc or DEFAULT_SOURCE_PATH)

    def _timezone(self, name: str | None) -> Zone | None:
        try:
            return resolve_zone(name, self.environ)
        except TimeZoneError as exc:
            self.error("source.timezone", str(exc))
            return None

    def _state(self, table: dict[str, Any], slurm: SlurmConf | None) -> StateSettings:
        explicit = self._get(table, "state", "dir", str)
        if explicit:
            directory = self._path(explicit)
        elif slurm is not None and slurm.state_save_location:
            directory = Path(slurm.state_save_location) / "jobcompd"
        else:
            directory = Path(DEFAULT_STATE_DIR)
        synchronous = self._choice(table, "state", "synchronous", ("full", "normal"), "full")
        return StateSettings(
            dir=directory,
            synchronous=cast(Literal["full", "normal"], synchronous),
            max_spool_records=self._count(table, "state", "max_spool_records", 1_000_000, 1),
            known_ids_days=self._days(table, "state", "known_ids_days", 400.0),
        )

    def _days(self, table: dict[str, Any], section: str, key: str, default: float) -> float:
        if key not in table:
            return default
        value = table[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            self.error(f"{section}.{key}", f"expected a number of days >= 0, got {value!r}")
            return default
        return float(value)

    def _log(self, table: dict[str, Any]) -> LogSettings:
        level = self._choice(table, "log", "level", ("debug", "info", "warning", "error"), "info")
        facility = self._choice(
            table, "log", "facility", tuple(sorted(_SYSLOG_FACILITIES)), "daemon"
        )
        return LogSettings(
            level=cast(Literal["debug", "info", "warning", "error"], level),
            format=cast(
                Literal["kv", "json"], self._choice(table, "log", "format", ("kv", "json"), "kv")
            ),
            target=cast(
                Literal["stderr", "syslog"],
                self._choice(table, "log", "target", ("stderr", "syslog"), "stderr"),
            ),
            facility=facility,
            debug_jobcomp=bool(self._get(table, "log", "debug_jobcomp", bool)),
        )

    def _status(self, table: dict[str, Any]) -> StatusThresholds:
        values: dict[str, Any] = {
            key: self._count(table, "status", key, getattr(StatusThresholds, key), 0)
            for key in _SECTIONS["status"]
            if key != "file"
        }
        report = self._get(table, "status", "file", str)
        values["file"] = self._path(report) if report else None
        for warn, crit in (("warn_spool", "crit_spool"), ("warn_age_s", "crit_age_s")):
            if values[crit] < values[warn]:
                self.error(
                    f"status.{crit}", f"{values[crit]} is below status.{warn} ({values[warn]})"
                )
        return StatusThresholds(**values)

    def _metrics(self, table: dict[str, Any]) -> MetricsSettings:
        listen = self._get(table, "metrics", "listen", str)
        textfile = self._get(table, "metrics", "textfile", str)
        host = port = None
        if listen:
            host, _, port_text = listen.rpartition(":")
            host = host.strip("[]")
            if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
                self.error("metrics.listen", f"{listen!r} is not HOST:PORT (e.g. \"127.0.0.1:9464\")")
                host = None
            else:
                port = int(port_text)
        return MetricsSettings(host, port, self._path(textfile) if textfile else None)

    # kafka -------------------------------------------------------------------------------------

    def _kafka(self, table: dict[str, Any], slurm: SlurmConf | None) -> KafkaSettings | None:
        params_text = self._get(table, "kafka", "params", str) or ""
        params, errors, warnings = parse_jobcomp_params(params_text)
        for reason in errors:
            self.error("kafka.params", reason)
        for reason in warnings:
            self.warn("kafka.params", reason)
        topic_given = re.search(r"(?:^|,)\s*topic\s*=", params_text, re.IGNORECASE) is not None
        topic = self._topic(params, topic_given, slurm)
        properties = self._properties(table)
        if topic is None or properties is None:
            return None
        rdkafka_conf = properties[1]
        return KafkaSettings(
            topic=topic, properties=properties[0], params=params, rdkafka_conf=rdkafka_conf
        )

    def _topic(
        self, params: JobCompParams, topic_given: bool, slurm: SlurmConf | None
    ) -> str | None:
        if params.topic or topic_given:  # a bad topic= is reported already: no fallback
            return params.topic
        if slurm is None or slurm.cluster_name is None:
            self.error(
                "kafka.params",
                "no Kafka topic: add topic=<name> to kafka.params, or "
                "set slurm_conf to a slurm.conf with ClusterName (the plugin's "
                "default topic)",
            )
            return None
        if not _TOPIC_NAME.fullmatch(slurm.cluster_name):
            self.error(
                "ClusterName",
                f"{slurm.cluster_name} {_BAD_TOPIC}, so it cannot be the "
                "default topic; add topic=<name> to kafka.params",
                source=str(slurm.path),
            )
            return None
        return slurm.cluster_name

    def _properties(self, table: dict[str, Any]) -> tuple[dict[str, str], Path | None] | None:
        conf_path, default_missing = self._rdkafka_conf_path(table)
        collected: list[_Property] = []
        if conf_path is not None:
            collected += self._read_properties_file(conf_path)
        inline = self._get(table, "kafka", "properties", dict) or {}
        collected += self._inline_properties(inline)
        if not self._librdkafka_accepts(collected):
            return None

        props: dict[str, _Property] = {}
        for prop in collected:
            props.pop(prop.key, None)  # a repeated key is applied where it was last set
            props[prop.key] = prop
        self._check_bootstrap(props, conf_path, default_missing)
        self._check_delivery_reports(props)
        self._add_producer_defaults(props)
        return {key: prop.value for key, prop in props.items()}, conf_path

    def _rdkafka_conf_path(self, table: dict[str, Any]) -> tuple[Path | None, bool]:
        """The properties file to read, and whether the default was wanted but is absent."""
        if "rdkafka_conf" in table:
            name = self._get(table, "kafka", "rdkafka_conf", str)
            return (self._path(name) if name else None), False
        default = Path(DEFAULT_RDKAFKA_CONF)
        if default.exists():
            return default, False
        return None, True

    def _read_properties_file(self, path: Path) -> list[_Property]:
        source = str(path)
        try:
            text = path.read_bytes().decode("utf-8")
            mode = path.stat().st_mode
        except OSError as exc:
            self.error("kafka.rdkafka_conf", f"cannot read {path}: {_os_reason(exc)}")
            return []
        except UnicodeDecodeError as exc:
            self.error("", f"not UTF-8 text: {exc}", source=source)
            return []
        found, ignored = _parse_properties(text, source)
        for lineno in ignored:
            # The plugin skips such a line; a property meant to be set (a password…) would then be
            # missing without a word. The line itself is not shown: it may hold a secret.
            self.error(f"line {lineno}", "no '=' in it: write key=value", source=source)
        secrets = sorted({prop.key for prop in found if is_secret(prop.key)})
        if secrets and mode & stat.S_IROTH:
            self.warn(
                "",
                f"holds secrets ({', '.join(secrets)}) but every user can read it",
                source=source,
            )
        return found

    def _inline_properties(self, inline: dict[str, Any]) -> list[_Property]:
        found = []
        for key, value in _flatten(inline):
            where = f'kafka.properties."{key}"'
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                text = str(value)
            else:
                self.error(where, f"expected a string, number or boolean, got {_toml_type(value)}")
                continue
            found.append(_Property(key, text, self.src, where))
        return found

    def _librdkafka_accepts(self, collected: list[_Property]) -> bool:
        try:
            _librdkafka.load()
        except _librdkafka.LibrdkafkaNotFound as exc:
            self.error("kafka", f"cannot check the librdkafka properties: {exc}")
            return False
        for prop in collected:
            for _key, reason in _librdkafka.conf_set_errors([(prop.key, prop.value)]):
                reason = reason.strip()
                if is_secret(prop.key) and prop.value:  # librdkafka quotes some values back
                    reason = reason.replace(prop.value, REDACTED)
                self.error(prop.where, f"{prop.shown()}: {reason}", source=prop.source)
        return True

    def _check_bootstrap(
        self, props: dict[str, _Property], conf_path: Path | None, default_missing: bool
    ) -> None:
        servers = _last_of(props, _BOOTSTRAP)
        if servers is not None and servers.value:
            return
        need = "the producer needs at least one broker, host:port[,host:port...]"
        if conf_path is not None:
            self.error(
                "bootstrap.servers",
                f"not set, here or in [kafka.properties] of {self.src}; {need}",
                source=str(conf_path),
            )
            return
        missing = f" (the default {DEFAULT_RDKAFKA_CONF} does not exist)" if default_missing else ""
        self.error(
            "kafka",
            f"bootstrap.servers is not set: no librdkafka properties file"
            f"{missing} and none in [kafka.properties]; {need}",
        )

    def _check_delivery_reports(self, props: dict[str, _Property]) -> None:
        only_errors = props.get("delivery.report.only.error")
        if only_errors is not None and _is_true(only_errors.value):
            self.error(
                only_errors.where,
                f"{only_errors.shown()}: jobcompd needs a delivery "
                "report for every message, a record is done only when Kafka has "
                "acknowledged it",
                source=only_errors.source,
            )
        transactional = props.get("transactional.id")
        if transactional is not None and transactional.value:
            self.error(
                transactional.where,
                f"{transactional.shown()}: jobcompd does not use "
                "Kafka transactions, and a transactional producer refuses messages "
                "outside one (enable.idempotence already prevents duplicates)",
                source=transactional.source,
            )

    def _add_producer_defaults(self, props: dict[str, _Property]) -> None:
        """``enable.idempotence=true`` and ``acks=all`` unless set; warn where set weaker."""
        acks = _last_of(props, _ACKS)
        idempotence = _last_of(props, _IDEMPOTENCE)
        conflicts = self._idempotence_conflicts(props)
        if idempotence is None:
            if conflicts:
                names = ", ".join(f"{prop.shown()} ({prop.origin()})" for prop in conflicts)
                self.warn(
                    "kafka.properties",
                    f"{_WEAKER}: enable.idempotence stays off because "
                    f"librdkafka allows it only with acks=all, retries above 0, "
                    f"max.in.flight up to 5 and queuing.strategy=fifo, and {names}; a "
                    "retried send can write a record twice or out of order",
                )
            else:
                props["enable.idempotence"] = _Property("enable.idempotence", "true", "", "")
        elif _is_true(idempotence.value):
            for prop in conflicts:
                self.error(
                    prop.where,
                    f"{prop.shown()} conflicts with enable.idempotence=true "
                    f"({idempotence.origin()}): librdkafka refuses to create such a "
                    "producer",
                    source=prop.source,
                )
        else:
            self.warn(
                idempotence.where,
                f"{_WEAKER}: {idempotence.shown()}, so a retried send can write a record twice",
                source=idempotence.source,
            )
        if acks is None:
            props["acks"] = _Property("acks", "all", "", "")
        elif not _acks_all(acks.value):
            effect = (
                "the producer does not wait for the broker, so a record can be lost "
                "without any error"
                if acks.value == "0"
                else "a record counts as delivered before every in-sync replica has it, so a "
                "broker failure can lose it"
            )
            self.warn(acks.where, f"{_WEAKER}: {acks.shown()}: {effect}", source=acks.source)

    @staticmethod
    def _idempotence_conflicts(props: dict[str, _Property]) -> list[_Property]:
        conflicts = []
        acks = _last_of(props, _ACKS)
        if acks is not None and not _acks_all(acks.value):
            conflicts.append(acks)
        retries = _last_of(props, _RETRIES)
        if retries is not None and _as_int(retries.value) == 0:
            conflicts.append(retries)
        in_flight = _last_of(props, _MAX_IN_FLIGHT)
        if in_flight is not None and (_as_int(in_flight.value) or 0) > 5:
            conflicts.append(in_flight)
        strategy = _last_of(props, _QUEUING_STRATEGY)
        if strategy is not None and strategy.value.lower() != "fifo":
            conflicts.append(strategy)
        return conflicts
