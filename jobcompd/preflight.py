"""``check-config --connect``: do the brokers answer, and is the topic there to produce to?

Nothing is written to the topic (a test message would land in every consumer's accounting);
the check asks the cluster for the topic's metadata with the producer's own configuration, which
exercises the same bootstrap, TLS and SASL path as production and reports the topic's own error
(unknown topic, authorization failed) and partitions without a leader.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException, Producer

from jobcompd.config import Settings

__all__ = ["ConnectionCheck", "check_connection"]


@dataclass(slots=True)
class ConnectionCheck:
    """The outcome: ``ok`` and human-readable lines."""

    ok: bool = True
    report: list[str] = field(default_factory=list)

    def fail(self, line: str) -> None:
        self.ok = False
        self.report.append(f"FAIL {line}")


def check_connection(settings: Settings, *, timeout: float = 10.0) -> ConnectionCheck:
    """Ask the cluster for metadata of the configured topic."""
    result = ConnectionCheck()
    conf: dict[str, Any] = dict(settings.kafka.producer_config())
    errors: list[str] = []
    conf["error_cb"] = lambda err: errors.append(f"{err.name()}: {err.str()}")
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
        result.fail(
            f"brokers {conf.get('bootstrap.servers')!r} did not answer: "
            f"{exc.args[0].str()}" + (f" ({errors[-1]})" if errors else "")
        )
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
