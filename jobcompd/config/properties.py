"""The librdkafka properties file (the plugin's format) and [kafka.properties]: read, checked by
librdkafka itself, and given the delivery guarantees jobcompd promises (idempotence, acks=all)."""

from __future__ import annotations

import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

from jobcompd import _librdkafka
from jobcompd.config._reader import TableReader, _flatten, _os_reason, _toml_type
from jobcompd.config.params import _BAD_TOPIC, _TOPIC_NAME, _WHITESPACE, parse_jobcomp_params
from jobcompd.config.secrets import is_secret
from jobcompd.config.settings import (
    DEFAULT_RDKAFKA_CONF,
    REDACTED,
    JobCompParams,
    KafkaSettings,
    SlurmConf,
    librdkafka_true,
)

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


def _acks_all(value: str) -> bool:
    return value.lower() in ("all", "-1")


def _as_int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


class KafkaSection(TableReader):
    """[kafka]: the topic, JobCompParams and the librdkafka properties, with their policy."""

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
        partitioning = self._choice(table, "kafka", "partitioning", ("key", "sticky"), "sticky")
        return KafkaSettings(
            topic=topic, properties=properties[0], params=params, rdkafka_conf=rdkafka_conf,
            partitioning=cast(Literal["key", "sticky"], partitioning),
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
        if not self._checked_by_librdkafka(collected):
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

    def _checked_by_librdkafka(self, collected: list[_Property]) -> bool:
        """Let librdkafka itself judge every property (each one it refuses is an error); False
        when the library cannot be loaded, so nothing could be checked."""
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
        if only_errors is not None and librdkafka_true(only_errors.value):
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
        elif librdkafka_true(idempotence.value):
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
