"""The producer worker: spooled records → Kafka, delivery reports → the durable state.

It mirrors the ``jobcomp/kafka`` plugin's delivery rules but never discards: what each report
means for its record is :func:`jobcompd.delivery.outcome` (the table is there); a full queue at
produce is backpressure (wait and retry), and at shutdown it flushes up to ``flush_timeout`` and
leaves every unacknowledged record in the spool.

Each message carries the record id as its key and as the ``record_id`` header, so a consumer can
drop the rare duplicate a crash can cause (a message acknowledged by Kafka whose report was not yet
committed to the state is sent again after a restart).

The worker is driven from one thread through :meth:`Sender.pump`; confluent-kafka serves delivery
reports inside ``poll()``, on that same thread.
"""

from __future__ import annotations

import collections
import json
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Any, NamedTuple

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from jobcompd.config import KafkaSettings
from jobcompd.delivery import PRODUCER_STATE, Outcome, outcome
from jobcompd.logs import Quieter, librdkafka_logger
from jobcompd.state import Delivery, SpooledRecord, State

__all__ = ["DeliveryReport", "Sender", "SenderCounters"]

RECORD_ID_HEADER = "record_id"
_STATS_INTERVAL_MS = 5000  # librdkafka's statistics: which brokers are up
_OFFERED_BATCHES = 4

class DeliveryReport(NamedTuple):
    """One delivery report as the worker saw it (``error`` is ``None`` on success)."""

    rid: str
    error: KafkaError | None
    partition: int
    offset: int


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


def _reason(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


class Sender:
    """Moves spooled records to Kafka and settles each one by its delivery report.

    ``window`` bounds the records handed to librdkafka and not yet reported; the spool, not
    librdkafka's queue, is where the backlog waits.
    """

    def __init__(
        self,
        state: State,
        kafka: KafkaSettings,
        *,
        debug_jobcomp: bool = False,
        window: int = 5_000,
        fetch: int = 2_000,
        logger: Any = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._state = state
        self._kafka = kafka
        self._debug = debug_jobcomp
        self._window = window
        self._fetch = fetch
        self._log = logger or structlog.get_logger("jobcompd.producer")
        self._quiet = Quieter(self._log)
        self._factory = producer_factory
        self._producer: Producer | None = None
        self._cursor = 0  # highest spool seq handed to librdkafka
        self._in_flight: dict[str, SpooledRecord] = {}
        self._backlog: list[SpooledRecord] = []  # fetched, not yet accepted by librdkafka
        # Batches just spooled, handed over by the reader (another thread, in the daemon).
        self._offered: collections.deque[Sequence[SpooledRecord]] = collections.deque()
        self._reports: list[DeliveryReport] = []
        self._rebuild = False
        self._spool_exhausted = False
        self._fetched_at = 0.0
        self.counters = SenderCounters()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def kafka(self) -> KafkaSettings:
        """The Kafka settings in force."""
        return self._kafka

    def start(self) -> None:
        """Create the librdkafka producer (idempotent)."""
        if self._producer is None:
            self._producer = self._new_producer(self._kafka)

    def _new_producer(self, kafka: KafkaSettings) -> Any:
        conf: dict[str, Any] = dict(kafka.producer_config())
        conf["on_delivery"] = self._on_delivery
        conf["error_cb"] = self._on_error
        conf["stats_cb"] = self._on_stats
        conf.setdefault("statistics.interval.ms", _STATS_INTERVAL_MS)
        conf.setdefault("logger", librdkafka_logger())
        return self._factory(conf)

    def reconfigure(self, kafka: KafkaSettings) -> None:
        """Apply new settings: topic and params at once; new librdkafka properties rebuild the producer.

        All or nothing: the new producer is created before the old one is let go, so settings it
        refuses raise and leave the running producer and settings as they were. A rebuild then
        flushes what is in flight (up to ``flush_timeout``), purges the rest, and sends it again
        from the spool with the new producer — nothing is lost, and what Kafka acknowledged is not
        sent twice.
        """
        rebuild = dict(kafka.producer_config()) != dict(self._kafka.producer_config())
        if rebuild and self._producer is not None:
            new = self._new_producer(kafka)  # raises on settings librdkafka refuses
            self._log.info("rebuilding producer for changed librdkafka properties")
            self._drain(self._kafka.params.flush_timeout)
            self._producer = new
        self._kafka = kafka

    def close(self, flush_timeout_ms: int | None = None) -> int:
        """Stop: flush up to ``flush_timeout`` ms, settle reports; return what is left unacknowledged.

        Whatever is left stays in the spool and is sent again at the next start.
        """
        if self._producer is None:
            return 0
        if flush_timeout_ms is None:
            flush_timeout_ms = self._kafka.params.flush_timeout
        self._drain(flush_timeout_ms)
        self._producer = None
        return self._state.spool_depth()

    def _drain(self, flush_timeout_ms: int) -> None:
        producer = self._producer
        assert producer is not None
        self._backlog.clear()
        self._offered.clear()
        # A producer that hit a fatal error raises from every call: what it did not report
        # stays in the spool either way.
        with suppress(KafkaException):
            if flush_timeout_ms < 0:
                producer.flush()
            else:
                producer.flush(flush_timeout_ms / 1000.0)
        with suppress(KafkaException):
            producer.purge(in_queue=True, in_flight=True, blocking=False)
        with suppress(KafkaException):
            producer.poll(0)
        with suppress(KafkaException):
            producer.flush(0)
        self._settle()
        # Anything still unreported stays in the spool; start over from its first record.
        self._in_flight.clear()
        self._cursor = 0
        self._spool_exhausted = False

    # -- the work ----------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing in flight and nothing in the spool beyond what was already sent."""
        return not self._in_flight and not self._backlog and self._spool_exhausted

    def pump(self, timeout: float = 0.1) -> int:
        """Produce what the window allows, serve delivery reports for up to ``timeout`` s, settle them.

        Returns the number of delivery reports settled.
        """
        if self._producer is None:
            self.start()
        if self._rebuild:
            self._rebuild_after_fatal()
        self._produce_more()
        producer = self._producer
        assert producer is not None
        try:
            producer.poll(timeout if not self._reports else 0)
        except KafkaException as exc:
            # confluent-kafka raises a fatal error (e.g. the idempotent producer lost its
            # sequence) from poll(): recreate the producer and send the spool again.
            self._on_error(exc.args[0])
        settled = self._settle()
        self._quiet.flush()
        return settled

    def wake(self) -> None:
        """New records were spooled: look for them at the next pump."""
        self._spool_exhausted = False

    def offer(self, records: Sequence[SpooledRecord]) -> None:
        """Records just spooled (`BatchResult.fresh`), to send without reading them back; thread-safe.

        They are sent from memory when they come next in the spool, right after what was already
        sent; otherwise they are dropped here and read from the spool in their turn. A sender that
        falls behind (a full window, a few batches offered already) drops what it holds, so a
        backlog never waits in memory.
        """
        if not records:
            return
        if len(self._in_flight) >= self._window or len(self._offered) >= _OFFERED_BATCHES:
            self._offered.clear()
            return
        self._offered.append(records)

    def _next_offered(self) -> Sequence[SpooledRecord] | None:
        while True:
            try:
                records = self._offered.popleft()
            except IndexError:
                return None
            if records[0].seq == self._cursor + 1:
                return records

    def _produce_more(self) -> None:
        if self._spool_exhausted and (
            time.monotonic() - self._fetched_at >= self._kafka.params.poll_interval
        ):
            # Records can reach the spool from elsewhere (``deadletter retry``): look again now
            # and then, at the plugin's poll_interval.
            self._spool_exhausted = False
        while len(self._in_flight) < self._window:
            if not self._backlog:
                batch = self._next_offered()
                if batch is None:
                    if self._spool_exhausted:
                        return
                    self._fetched_at = time.monotonic()
                    batch = self._state.pending(after_seq=self._cursor, limit=self._fetch)
                    if len(batch) < self._fetch:
                        self._spool_exhausted = True
                    if not batch:
                        return
                self._cursor = batch[-1].seq
                self._backlog = list(reversed(batch))  # pop() from the end keeps spool order
            if not self._produce(self._backlog[-1]):
                return
            self._backlog.pop()

    def _produce(self, record: SpooledRecord) -> bool:
        """Hand one record to librdkafka; ``False`` when its queue is full (backpressure)."""
        producer = self._producer
        assert producer is not None
        try:
            producer.produce(
                self._kafka.topic,
                value=record.payload,
                key=record.rid,
                headers=[(RECORD_ID_HEADER, record.rid)],
            )
        except BufferError:
            self.counters.backpressure_waits += 1
            return False
        except KafkaException as exc:
            error: KafkaError = exc.args[0]
            # A producer in a fatal state refuses every record with _FATAL, whose error object
            # does not always say fatal(): the producer is at fault, not the record.
            if error.fatal() or error.code() in PRODUCER_STATE:
                self._log.error("producer fatal error", error=_reason(error))
                self._rebuild = True
                return False
            reason = _reason(error)
            self._dead_lettered(record, reason, "record refused by librdkafka, dead-lettered")
            self._state.dead_letter_many({record.seq: reason})
            self.counters.dead_lettered += 1
            return True
        self._in_flight[record.rid] = record
        self.counters.produced += 1
        return True

    def _on_delivery(self, error: KafkaError | None, message: Message) -> None:
        key = message.key()
        rid = key.decode() if isinstance(key, bytes) else str(key)
        self._reports.append(DeliveryReport(rid, error, message.partition() or 0, message.offset() or 0))

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
        try:
            brokers = list(json.loads(text).get("brokers", {}).values())
        except ValueError:
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

    def _dead_lettered(self, record: SpooledRecord, reason: str, event: str) -> None:
        """Log a dead letter: each one with ``debug_jobcomp``, else once a minute per reason."""
        if self._debug:
            self._log.error(event, jobid=record.jobid, rid=record.rid, reason=reason)
        else:
            self._quiet.log(f"dead:{reason}", logging.ERROR, event, jobid=record.jobid, reason=reason)

    def _settle(self) -> int:
        """Write the served delivery reports to the state, then forget them.

        If the state cannot be written (disk full, read-only), nothing is forgotten: the reports
        stay queued and are settled again at the next pump, so no record is stranded.
        """
        reports = self._reports
        if not reports:
            return 0
        delivered: list[Delivery] = []
        dead: dict[int, str] = {}
        requeue: list[SpooledRecord] = []
        attempts: dict[int, str | None] = {}
        dead_records: list[SpooledRecord] = []
        requeue_timeouts = self._kafka.params.requeue_on_msg_timeout
        in_flight = self._in_flight
        for report in reports:
            record = in_flight.get(report.rid)
            if record is None:
                continue  # not sent by this producer: if it is still spooled, it is sent again
            fate = outcome(report.error, requeue_on_msg_timeout=requeue_timeouts, rebuilding=self._rebuild)
            if fate is Outcome.DELIVERED or report.error is None:
                delivered.append(Delivery(record.seq, report.partition, report.offset))
            elif fate is Outcome.REBUILD:
                self._rebuild = True  # stays in the spool, for the rebuilt producer
                attempts[record.seq] = _reason(report.error)
            elif fate is Outcome.REQUEUE:
                requeue.append(record)
                attempts[record.seq] = _reason(report.error)
            elif fate is Outcome.DEAD_LETTER:
                dead[record.seq] = _reason(report.error)
                dead_records.append(record)
        # Durable first (each call is idempotent, so a retry after a partial failure is safe).
        if delivered:
            self._state.mark_delivered(delivered)
        if dead:
            self._state.dead_letter_many(dead)
        if attempts:
            self._state.record_attempts(attempts)
        self._reports = []
        for report in reports:
            record = in_flight.pop(report.rid, None)
            if self._debug and report.error is None and record is not None:
                self._log.info(
                    "job delivered",
                    jobid=record.jobid,
                    rid=report.rid,
                    partition=report.partition,
                    offset=report.offset,
                )
        if delivered:
            self.counters.delivered += len(delivered)
            self.counters.last_delivery_at = time.time()
        for record in requeue:
            self.counters.requeued += 1
            if self._debug:
                self._log.warning("message timed out, producing again", jobid=record.jobid, rid=record.rid)
            else:
                self._quiet.log("requeue", logging.WARNING, "messages timed out, producing them again",
                                jobid=record.jobid)
            if not self._produce(record):
                self._backlog.append(record)
        for record in dead_records:
            self.counters.dead_lettered += 1
            self._dead_lettered(record, dead[record.seq], "delivery failed, dead-lettered")
        return len(reports)

    def _rebuild_after_fatal(self) -> None:
        self._rebuild = False
        self._log.warning("recreating the producer after a fatal error")
        if self._producer is not None:
            self._drain(0)
        self._producer = None
        self.start()
