"""``check-config --connect``: do the brokers answer, and is the topic there to produce to?

Nothing is written to the topic (a test message would land in every consumer's accounting);
the check asks the cluster for the topic's metadata with the producer's own configuration, which
exercises the same bootstrap, TLS and SASL path as production and reports the topic's own error
(unknown topic, authorization failed) and partitions without a leader.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from jobcompd.config import Settings

__all__ = ["ConnectionCheck", "cause", "check_connection"]


@dataclass(slots=True)
class ConnectionCheck:
    """The outcome: ``ok`` and human-readable lines."""

    ok: bool = True
    report: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.ok = False
        self.report.append(f"FAIL {line}")


_CAUSES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"Connect to (?:ipv[46]#)?(\S+) failed: Connection refused"),
     "connection refused on {0}: nothing listens there (broker down, or a wrong host or port)"),
    (re.compile(r"Failed to resolve '([^']+)'"),
     "name not resolved: {0} (check bootstrap.servers and DNS)"),
    (re.compile(r"Connect to (?:ipv[46]#)?(\S+) failed: (?:Connection timed out|No route to host)"),
     "no answer from {0} (a firewall, or an address that is not reachable from here)"),
    (re.compile(r"(?:SSL handshake failed|certificate verify failed|SSL routines)[^\n]*"),
     "TLS failure: {line} (check security.protocol and the ssl.* properties)"),
    (re.compile(r"SASL authentication (?:error|failed)[^\n]*|Authentication failed[^\n]*"),
     "SASL authentication failed: {line} (check the sasl.* properties and the credentials)"),
)


def cause(errors: Sequence[str]) -> str | None:
    """The reason a connection failed, in one line, from librdkafka's error and log lines."""
    found: list[str] = []
    for line in errors:
        for pattern, text in _CAUSES:
            if m := pattern.search(line):
                reason = text.format(*m.groups(), line=m.group(0))
                if reason not in found:
                    found.append(reason)
                break
    return "; ".join(found[:2]) if found else None


class _Collected(logging.Logger):
    """librdkafka's log lines, kept for the verdict instead of printed raw."""

    def __init__(self) -> None:
        super().__init__("jobcompd.preflight.librdkafka", logging.DEBUG)
        self.lines: list[str] = []

    def handle(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def check_connection(settings: Settings, *, timeout: float = 10.0) -> ConnectionCheck:
    """Ask the cluster for metadata of the configured topic."""
    result = ConnectionCheck()
    conf: dict[str, Any] = dict(settings.kafka.producer_config())
    errors: list[str] = []
    conf["error_cb"] = lambda err: errors.append(f"{err.name()}: {err.str()}")
    collected = _Collected()
    conf["logger"] = collected
    # Look, don't create: a metadata request may otherwise auto-create the topic.
    conf["allow.auto.create.topics"] = "false"
    try:
        producer = Producer(conf)
    except KafkaException as exc:
        result.fail(f"cannot create a producer: {exc.args[0].str()}")
        return result
    topic = settings.kafka.topic
    try:
        meta = producer.list_topics(topic, timeout=timeout)
    except KafkaException as exc:
        producer.poll(0.2)  # hand over the log lines and errors queued so far
        why = cause([*errors, *collected.lines]) or exc.args[0].str()
        result.fail(f"brokers {conf.get('bootstrap.servers')!r} did not answer within {timeout:g} s: {why}")
        return result
    result.report.append(f"ok   brokers answer: {len(meta.brokers)} broker(s), cluster id {meta.cluster_id}")
    info = meta.topics.get(topic)
    if info is None or info.error is not None:
        reason = info.error.str() if info is not None and info.error is not None else "missing"
        result.fail(
            f"topic {topic!r}: {reason} (create it, or check the ACLs; a broker with "
            "auto.create.topics.enable would create it at the first message)"
        )
        return result
    leaderless = [p.id for p in info.partitions.values() if p.leader < 0]
    if leaderless:
        result.fail(f"topic {topic!r}: partitions without a leader: {leaderless}")
    else:
        result.report.append(f"ok   topic {topic!r}: {len(info.partitions)} partition(s), all with a leader")
    return result
