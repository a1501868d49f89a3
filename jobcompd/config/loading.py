"""Loading jobcompd.toml: find it, parse it, build every section, report every problem at once."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

from jobcompd.config._reader import _did_you_mean, _os_reason, _toml_error, _toml_type
from jobcompd.config.properties import KafkaSection
from jobcompd.config.settings import (
    _SECTIONS,
    _TOP_LEVEL,
    CONFIG_ENV_VAR,
    DEFAULT_CONFIG_PATH,
    DEFAULT_SOURCE_PATH,
    DEFAULT_STATE_DIR,
    ConfigError,
    ConfigProblem,
    LogSettings,
    MetricsSettings,
    Settings,
    SlurmConf,
    SourceSettings,
    StateSettings,
    StatusThresholds,
)
from jobcompd.config.slurm import _parse_slurm_conf
from jobcompd.zone import TimeZoneError, Zone
from jobcompd.zone import resolve as resolve_zone

_SYSLOG_FACILITIES = frozenset(
    ("kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron")
    + ("authpriv", "ftp", *(f"local{n}" for n in range(8)))
)


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


class _Builder(KafkaSection):
    """Builds the `Settings` of one document."""

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
        start_at = self._choice(table, "source", "start_at", ("beginning", "end"), SourceSettings.start_at)
        poll = self._get(table, "source", "poll", bool)
        max_line_bytes = self._count(table, "source", "max_line_bytes", SourceSettings.max_line_bytes, 1)
        parse_worker = self._parse_worker(table)
        if zone is None:
            return None
        return SourceSettings(
            path=path,
            zone=zone,
            start_at=cast(Literal["beginning", "end"], start_at),
            poll=bool(poll),
            max_line_bytes=max_line_bytes,
            parse_worker=parse_worker,
        )

    def _parse_worker(self, table: dict[str, Any]) -> bool | Literal["auto"]:
        value = table.get("parse_worker", SourceSettings.parse_worker)
        if isinstance(value, bool) or value == "auto":
            return cast(bool | Literal["auto"], value)
        self.error(
            "source.parse_worker",
            f'expected true, false or "auto", got {_toml_type(value)} {value!r}',
        )
        return SourceSettings.parse_worker

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
        d = StateSettings
        synchronous = self._choice(table, "state", "synchronous", ("full", "normal"), d.synchronous)
        return StateSettings(
            dir=directory,
            synchronous=cast(Literal["full", "normal"], synchronous),
            max_spool_records=self._count(table, "state", "max_spool_records", d.max_spool_records, 1),
            known_ids_days=self._days(table, "state", "known_ids_days", d.known_ids_days),
        )

    def _log(self, table: dict[str, Any]) -> LogSettings:
        d = LogSettings
        level = self._choice(table, "log", "level", ("debug", "info", "warning", "error"), d.level)
        facility = self._choice(table, "log", "facility", tuple(sorted(_SYSLOG_FACILITIES)), d.facility)
        return LogSettings(
            level=cast(Literal["debug", "info", "warning", "error"], level),
            format=cast(
                Literal["kv", "json"], self._choice(table, "log", "format", ("kv", "json"), d.format)
            ),
            target=cast(
                Literal["stderr", "syslog"],
                self._choice(table, "log", "target", ("stderr", "syslog"), d.target),
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
