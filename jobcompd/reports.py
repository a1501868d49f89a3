"""Delivery reports and what else librdkafka tells: settling each record in the state by the
policy of :mod:`jobcompd.delivery`, the producer's own errors, and which brokers are up."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import repeat
from typing import Any

import orjson
from confluent_kafka import KafkaError, Message

from jobcompd.config import KafkaSettings
from jobcompd.delivery import Outcome, outcome
from jobcompd.logs import Quieter
from jobcompd.partitions import Partitions
from jobcompd.sendloop import PythonReports, Undelivered, delivered_pairs, forget
from jobcompd.state import Delivery, SpooledRecord, State

__all__ = ["InFlight", "ReportHandling", "SenderCounters"]

# Delivery reports are settled in the state a batch at a time: once they make this share of the
# window, or this long after the first of them (a transaction per report would cost a live trickle
# most of a core; a bulk's transactions cost ~1 ms each, so they hold thousands of reports).
# Reports not settled yet count in the window until they are: the window stays the bound on what
# a crash sends again.
_SETTLE_SHARE = 0.8
_SETTLE_HOLD_S = 0.02
# … except deliveries found while another thread has the state (the reader, committing its batch):
# they leave the window, and wait to be settled while the sender goes on producing, up to a window
# of them or this long; then it waits for the state. (A crash sends again two windows at most.)
_UNSETTLED_S = 0.25
_BUSY_RETRY_S = 0.002  # how soon to try the state again, while deliveries wait for it

# A record handed to librdkafka and not yet reported, by record id: its spool seq, job id and
# payload size (the payload itself is librdkafka's now).
InFlight = tuple[int, int, int]


@dataclass(slots=True)
class SenderCounters:
    """What this worker did since it started (the state keeps the durable totals)."""

    produced: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    requeued: int = 0
    backpressure_waits: int = 0
    last_delivery_at: float | None = None
    brokers_up: int | None = None  # from librdkafka's statistics; None until the first ones
    brokers_known: int | None = None
    brokers_down_since: float | None = None  # no broker up since then


def _rid_of(report: Message | Undelivered | bytes | None) -> str:
    """The record id a report is for: its message's key (``report``: the message, or its key)."""
    key = report.key() if isinstance(report, Message | Undelivered) else report
    return key.decode() if isinstance(key, bytes) else str(key)


def _reason(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


class ReportHandling:
    """The report side of :class:`jobcompd.producer.Sender`: what it shares with the send side."""

    _state: State
    _kafka: KafkaSettings
    _debug: bool
    _log: Any
    _quiet: Quieter
    _producer: Any
    _in_flight: dict[str, InFlight]
    _in_flight_bytes: int  # bytes of the payloads of _in_flight
    _window: int  # records in flight or reported and not settled, at most
    _backlog: list[SpooledRecord]
    # The reports served and not settled yet (jobcompd.sendloop.Reports): the key of each one that
    # says delivered (all it takes to settle it), each failure with its message, and when the
    # first of them came.
    _reports: PythonReports
    _early: set[str]  # record ids in flight whose batch is not committed yet
    # The reports of those (as _reports.delivered and .failed), settled once their batch is.
    _early_delivered: list[bytes | None]
    _early_failed: list[tuple[KafkaError, Message]]
    # Records reported delivered, out of flight, not settled in the state yet (it was busy): their
    # (seq, job id) as the state settles them, and when the first came.
    _unsettled: list[tuple[int, int]]
    _unsettled_since: float
    _send_lock: threading.RLock
    _partitions: Partitions
    _rebuild: bool
    counters: SenderCounters
    _produce_backlog: Callable[[int], bool]
    _drain: Callable[[int], None]
    _room: Callable[[], int]
    start: Callable[[], None]

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        """The report callback with ``debug_jobcomp``: each report kept, and each delivery logged
        (without it, :attr:`_reports` itself is the callback)."""
        self._reports(error, message)
        if error is None:
            self._log_delivered(message)

    def _log_delivered(self, message: Message) -> None:
        """``debug_jobcomp``: each delivery as its report comes (as the plugin's callback logs it),
        not when it is settled in the state, which may be a little later (:meth:`_settle_due`)."""
        rid = _rid_of(message)
        entry = self._in_flight.get(rid)
        if entry is not None:
            self._log.info("job delivered", jobid=entry[1], rid=rid, partition=message.partition(),
                           offset=message.offset())

    def _settle_due(self) -> bool:
        """Whether to settle the reports served: a batch of them is settled in one transaction,
        once they fill ``_SETTLE_SHARE`` of the window or the first came ``_SETTLE_HOLD_S`` ago,
        or at once when the window is full (a live trickle would otherwise cost a transaction per
        record)."""
        served = self._reports
        reports = len(served.delivered) + len(served.failed)
        return bool(self._unsettled) or (
            bool(reports)
            and (
                reports >= self._window * _SETTLE_SHARE
                or time.monotonic() - served.since >= _SETTLE_HOLD_S
                or not self._room()
                or self._rebuild
            )
        )

    def _settle_wait(self, timeout: float) -> float:
        """How long the next poll may wait: ``timeout``, but not past the time the reports served
        are due to be settled."""
        served = self._reports
        if self._unsettled:
            timeout = min(timeout, _BUSY_RETRY_S)
        if not served.delivered and not served.failed:
            return timeout
        return max(0.0, min(timeout, served.since + _SETTLE_HOLD_S - time.monotonic()))

    def _on_error(self, error: KafkaError) -> None:
        if error.fatal():
            self._log.error("producer fatal error", error=_reason(error))
            self._rebuild = True
        else:
            self._quiet.log(
                f"client:{error.code()}", logging.WARNING, "kafka client error", error=_reason(error)
            )

    def _on_stats(self, text: str) -> None:
        """librdkafka's statistics: count the brokers it has up (those it learned, else the
        bootstrap ones), and say once when none is and when one is again."""
        try:  # some 50 kB of JSON every statistics.interval.ms: orjson reads it in a third of the time
            brokers = list(orjson.loads(text).get("brokers", {}).values())
        except (ValueError, AttributeError):
            return
        learned = [b for b in brokers if b.get("nodeid", -1) >= 0] or brokers
        up = sum(1 for b in learned if b.get("state") == "UP")
        counters = self.counters
        counters.brokers_up, counters.brokers_known = up, len(learned)
        if learned and not up:
            if counters.brokers_down_since is None:
                counters.brokers_down_since = time.time()
                self._log.warning("no Kafka broker reachable", brokers=len(learned))
        elif counters.brokers_down_since is not None:
            down = time.time() - counters.brokers_down_since
            counters.brokers_down_since = None
            self._log.info("Kafka brokers reachable again", up=up, after_s=round(down, 1))

    def _dead_lettered(self, jobid: int, rid: str, reason: str, event: str) -> None:
        """Log a dead letter: each one with ``debug_jobcomp``, else once a minute per reason."""
        if self._debug:
            self._log.error(event, jobid=jobid, rid=rid, reason=reason)
        else:
            self._quiet.log(f"dead:{reason}", logging.ERROR, event, jobid=jobid, reason=reason)

    def _settle(self) -> int:
        """Write the served delivery reports to the state, then forget them.

        If the state cannot be written (disk full, read-only), nothing is forgotten: the reports
        stay queued and are settled again at the next pump, so no record is stranded.
        """
        with self._send_lock:  # what is in flight is complete: no produce is half done
            return self._settle_locked()

    def _settle_locked(self) -> int:
        keys, failed = self._reports.delivered, self._reports.failed
        if not keys and not failed:
            self._settle_unsettled(wait=self._unsettled_due())
            return 0
        if not failed:
            settled = self._settle_all_delivered(keys)
            if settled is not None:
                return settled
        delivered: list[Delivery] = []
        dead: dict[int, str] = {}
        dead_records: list[tuple[int, int, str]] = []  # seq, job id, record id
        requeue: list[SpooledRecord] = []
        attempts: dict[int, str | None] = {}
        requeue_timeouts = self._kafka.params.requeue_on_msg_timeout
        in_flight = self._in_flight
        rids: list[str] = []
        waiting: list[bytes | None] = []
        waiting_failed: list[tuple[KafkaError, Message]] = []
        for key in keys:
            rid = _rid_of(key)
            entry = in_flight.get(rid)
            if entry is None:
                continue  # not sent by this producer: if it is still spooled, it is sent again
            if not entry[0]:  # produced before its batch was committed: settled once it is
                waiting.append(key)
                continue
            rids.append(rid)
            delivered.append(Delivery(entry[0], entry[1]))
        for error, message in failed:
            rid = _rid_of(message)
            entry = in_flight.get(rid)
            if entry is None:
                continue  # (as above)
            seq, jobid, _ = entry
            if not seq:
                waiting_failed.append((error, message))
                continue
            rids.append(rid)
            if self._partitions.gone(error, self._kafka):
                fate = Outcome.REQUEUE  # produced again, by its key
            else:
                fate = outcome(error, requeue_on_msg_timeout=requeue_timeouts, rebuilding=self._rebuild)
            if fate is Outcome.REBUILD:
                self._rebuild = True  # stays in the spool, for the rebuilt producer
                attempts[seq] = _reason(error)
            elif fate is Outcome.REQUEUE:
                reason = _reason(error)
                # Produced again from the report's own copy of the payload.
                requeue.append(SpooledRecord(seq, rid, jobid, message.value() or b"", "", 0.0, 0, reason))
                attempts[seq] = reason
            elif fate is Outcome.DEAD_LETTER:
                dead[seq] = _reason(error)
                dead_records.append((seq, jobid, rid))
        # Durable first (each call is idempotent, so a retry after a partial failure is safe).
        unsettled = self._unsettled
        if delivered or unsettled:
            self._state.mark_delivered([*unsettled, *delivered])
        if dead:
            self._state.dead_letter_many(dead)
        if attempts:
            self._state.record_attempts(attempts)
        self._reports.delivered, self._reports.failed = [], []
        self._unsettled = []
        self._early_delivered += waiting
        self._early_failed += waiting_failed
        pop = in_flight.pop
        self._in_flight_bytes -= sum(entry[2] for entry in map(pop, rids, repeat(None)) if entry is not None)
        if delivered or unsettled:
            self.counters.delivered += len(delivered) + len(unsettled)
            self.counters.last_delivery_at = time.time()
        for record in requeue:
            self.counters.requeued += 1
            why = record.last_error
            if self._debug:
                self._log.warning("message not delivered, producing again", jobid=record.jobid,
                                  rid=record.rid, reason=why)
            else:
                self._quiet.log(f"requeue:{why}", logging.WARNING,
                                "messages not delivered, producing them again",
                                jobid=record.jobid, reason=why)
            self._backlog.append(record)  # produced next
        if requeue:
            self._produce_backlog(len(requeue))
        for seq, jobid, rid in dead_records:
            self.counters.dead_lettered += 1
            self._dead_lettered(jobid, rid, dead[seq], "delivery failed, dead-lettered")
        return len(keys) + len(failed)

    def _settle_all_delivered(self, keys: list[bytes | None]) -> int | None:
        """:meth:`_settle_locked` for reports that all say delivered (their ``keys``), of records
        all in flight here (the usual case), without a Python loop per report; ``None``: not that
        case, nothing done. If another thread has the state, they wait (:meth:`_settle_unsettled`)."""
        found = delivered_pairs(keys, self._in_flight, self._early)
        if found is None:
            return None
        delivered, rids = found
        if not self._unsettled:
            self._unsettled_since = time.monotonic()
        self._unsettled += delivered
        self._reports.delivered = []
        self._in_flight_bytes -= forget(self._in_flight, rids)
        self._settle_unsettled(wait=self._unsettled_due())
        return len(keys)

    def _unsettled_due(self) -> bool:
        """Whether the deliveries not settled yet must be now, waiting for the state if need be."""
        return (
            len(self._unsettled) >= self._window
            or time.monotonic() - self._unsettled_since >= _UNSETTLED_S
        )

    def _settle_unsettled(self, *, wait: bool = True) -> None:
        """Settle the deliveries found and not settled yet; unless ``wait``, only if no other thread
        has the state (they wait for the next try)."""
        unsettled = self._unsettled
        if not unsettled or self._state.mark_delivered(unsettled, wait=wait) is None:
            return
        self._unsettled = []
        self.counters.delivered += len(unsettled)
        self.counters.last_delivery_at = time.time()

    def _rebuild_after_fatal(self) -> None:
        self._rebuild = False
        self._log.warning("recreating the producer after a fatal error")
        if self._producer is not None:
            self._drain(0)
        self._producer = None
        self.start()
