"""How the daemon shows itself: its health report (health.json, the monitoring group's copy),
systemd's STATUS= line, the Prometheus metrics, and the retention of known record ids."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from jobcompd.config import Settings
from jobcompd.health import Health, write_health
from jobcompd.logs import Quieter
from jobcompd.producer import SenderThread
from jobcompd.state import State, StateError, Stats
from jobcompd.tailer import Tailer

if TYPE_CHECKING:  # prometheus_client (~3.5 MB of memory) is loaded only when metrics are on
    from jobcompd.metrics import Facts, Metrics

__all__ = ["Monitoring"]

_PRUNE_STEP = 5_000  # ids a transaction, at most
_PRUNE_STEPS = 20  # transactions a turn of the main loop, at most


class Monitoring:
    """The reporting part of :class:`jobcompd.daemon.Daemon` (what it shares with it below)."""

    settings: Settings
    _log: Any
    _quiet: Quieter
    _lines_read: int
    _metrics: Metrics | None
    _notifier: Any
    _health: Health
    _state: State | None
    _tailer: Tailer | None
    _sender: SenderThread | None

    def _start_metrics(self) -> None:
        m = self.settings.metrics
        if m.port is None and m.textfile is None:
            return
        from jobcompd.metrics import Metrics

        self._metrics = Metrics(self._facts, host=m.host, port=m.port, textfile=m.textfile)
        if m.port is not None:
            self._log.info("serving metrics", listen=f"{m.host}:{m.port}")

    def _facts(self) -> Facts:
        """What the metrics show, read when they are scraped (from the server's thread)."""
        from jobcompd.metrics import Facts

        assert self._state is not None
        stats = self._state.stats()
        sender = self._sender.sender.counters if self._sender else None
        tailer = self._tailer
        oldest = stats.oldest_pending_at
        health = self._health
        return Facts(
            lines_read=self._lines_read,
            delivered=stats.delivered_total,
            quarantined=stats.quarantined_total,
            ambiguous=stats.ambiguous_total,
            dead_letters=stats.deadletter_count,
            spool=stats.spool_depth,
            oldest_undelivered_s=max(0.0, time.time() - oldest) if oldest else 0.0,
            lag_bytes=tailer.status().lag_bytes if tailer is not None else None,
            last_delivery_at=stats.last_delivered_at,
            brokers_up=sender.brokers_up if sender else None,
            health_ok=health.state_error is None
            and health.source_error is None
            and (sender is None or sender.brokers_down_since is None),
        )

    def _report_health(self) -> None:
        sender = self._sender.sender if self._sender else None
        if sender is not None:
            counters = sender.counters
            self._health.last_delivery_at = counters.last_delivery_at or None
            self._health.brokers_up = counters.brokers_up
            self._health.brokers_down_since = counters.brokers_down_since
        self._health.source_error = self._tailer.problem if self._tailer is not None else None
        report = self.settings.status.file
        if report is not None and self._state is not None:
            # The numbers status shows, for a monitoring user who may not read the state.
            try:
                stats: Stats | None = self._state.stats()
            except StateError:
                stats = None
            h = self._health
            if stats is not None:
                h.take(stats)
            h.lag_bytes = self._tailer.status().lag_bytes if self._tailer is not None else None
        self._health.updated_at = time.time()
        write_health(self.settings.state.dir, self._health)
        if report is not None:
            write_health(self.settings.state.dir, self._health, path=report, mode=0o640)

    def _status_line(self, depth: int) -> str:
        sender = self._sender.sender if self._sender else None
        parts = [f"spool {depth}"]
        if sender is not None and sender.counters.last_delivery_at:
            parts.append(f"delivered {sender.counters.delivered}")
        if self._health.backpressure:
            parts.append("PAUSED (spool full)")
        if self._health.state_error:
            parts.append(f"STATE ERROR: {self._health.state_error}")
        if self._health.source_error:
            parts.append(f"LOG ERROR: {self._health.source_error}")
        return "STATUS=" + ", ".join(parts)

    def _notify(self, *lines: str) -> None:
        if self._notifier is not None:
            self._notifier.notify("\n".join(lines))

    def _prune_known(self) -> bool:
        """Forget known ids past ``state.known_ids_days``, a few steps at a time; True when done."""
        days = self.settings.state.known_ids_days
        if not days or self._state is None:
            return True
        older_than = time.time() - days * 86400
        pruned = 0
        try:
            for _ in range(_PRUNE_STEPS):
                step = self._state.prune_delivered(older_than, limit=_PRUNE_STEP)
                pruned += step
                if step < _PRUNE_STEP:
                    return True
        except StateError as exc:
            self._log.warning("cannot forget old known record ids now", error=str(exc))
            return True
        finally:
            if pruned:
                self._log.info("known record ids forgotten", count=pruned, older_than_days=days)
        return False
