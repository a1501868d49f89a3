"""Prometheus metrics of the running daemon: an HTTP endpoint and a node_exporter textfile.

The numbers are read when scraped (or when the textfile is written) from what the daemon already
keeps: the state's durable counters, the sender's broker view, the tailer's lag, the health
record. Nothing is counted twice and nothing costs anything between scrapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server, write_to_textfile
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

import jobcompd

__all__ = ["Facts", "Metrics"]


@dataclass(frozen=True, slots=True)
class Facts:
    """One look at the daemon, for one scrape."""

    lines_read: int
    delivered: int
    quarantined: int
    ambiguous: int
    dead_letters: int
    spool: int
    oldest_undelivered_s: float
    lag_bytes: int | None
    last_delivery_at: float | None
    brokers_up: int | None
    health_ok: bool


class _Collector:
    def __init__(self, facts: Callable[[], Facts]) -> None:
        self._facts = facts

    def collect(self) -> Iterator[Any]:
        f = self._facts()

        def counter(name: str, text: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(f"jobcompd_{name}", text, value=value)

        def gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"jobcompd_{name}", text, value=value)

        yield counter("lines_read", "Log lines read and committed since the daemon started", f.lines_read)
        yield counter("records_delivered", "Records acknowledged by Kafka (durable total)", f.delivered)
        yield counter("records_quarantined", "Lines quarantined as not records (durable total)",
                      f.quarantined)
        yield counter("records_ambiguous", "Records read with a choice between readings (durable "
                      "total)", f.ambiguous)
        yield gauge("dead_letters", "Records Kafka refused, held in the state", f.dead_letters)
        yield gauge("spool_records", "Records waiting for Kafka's acknowledgement", f.spool)
        yield gauge("oldest_undelivered_seconds", "Age of the oldest undelivered record",
                    f.oldest_undelivered_s)
        if f.lag_bytes is not None:
            yield gauge("log_lag_bytes", "Bytes of the log (and rotated files) not read yet",
                        f.lag_bytes)
        if f.last_delivery_at is not None:
            yield gauge("last_delivery_timestamp_seconds", "When Kafka last acknowledged a record",
                        f.last_delivery_at)
        if f.brokers_up is not None:
            yield gauge("brokers_up", "Kafka brokers librdkafka has up", f.brokers_up)
        yield gauge("health_ok", "1 unless the daemon cannot write its state, reach a broker or "
                    "read (the reason is logged)", 1 if f.health_ok else 0)
        yield InfoMetricFamily("jobcompd_build", "jobcompd's version",
                               value={"version": jobcompd.__version__})


class Metrics:
    """Serves ``facts()`` on ``host:port`` and/or writes them to ``textfile`` when asked."""

    def __init__(self, facts: Callable[[], Facts], *, host: str | None = None,
                 port: int | None = None, textfile: Path | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(facts))  # type: ignore[arg-type]
        self._textfile = textfile
        self._server: Any = None
        if port is not None:
            self._server, _ = start_http_server(port, addr=host or "127.0.0.1", registry=self.registry)

    def write_textfile(self) -> None:
        """Replace the textfile atomically (a temporary file renamed over it), if there is one."""
        if self._textfile is not None:
            write_to_textfile(str(self._textfile), self.registry)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
