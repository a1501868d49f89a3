"""The producer worker: spooled records → Kafka, delivery reports → the durable state.

It mirrors the ``jobcomp/kafka`` plugin's delivery rules but never discards: what each report
means for its record is :func:`jobcompd.delivery.outcome` (the table is there); a full queue at
produce is backpressure (wait and retry), and at shutdown it flushes up to ``flush_timeout`` and
leaves every unacknowledged record in the spool.

Each message carries the record id as its key and as the ``record_id`` header, so a consumer can
drop the rare duplicate a crash can cause (a message acknowledged by Kafka whose report was not yet
committed to the state is sent again after a restart).

The worker is driven from one thread through :meth:`Sender.pump`; confluent-kafka serves delivery
reports inside ``poll()``, on that same thread. The reader may hand the records it just spooled to
:meth:`Sender.send_now`, from its own thread: when the sender is caught up they are produced right
there, without waiting for the sender thread to wake (the send side is under one lock). Lines that
come a few at a time go further: their new records are produced before their batch is committed
(:meth:`Sender.send_early`), so that they wait for Kafka while the batch is flushed to disk, and
are settled only once it is committed (:meth:`Sender.confirm`). A backlog's batches go further
still: their records are produced as soon as they are parsed (:meth:`Sender.send_parsed`, on the
parse thread), and their batch is committed once Kafka acknowledged them — those records are
committed as delivered, never spooled (:meth:`Sender.delivered_of`); only the others are spooled,
in flight already, and settled by their reports as above.
"""

from __future__ import annotations

import collections
import operator
import queue
import threading
import time
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from contextlib import suppress
from typing import Any

import structlog
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from jobcompd.batch import RecordBatch
from jobcompd.config import KafkaSettings
from jobcompd.delivery import PRODUCER_STATE
from jobcompd.logs import Quieter, librdkafka_logger
from jobcompd.partitions import Partitions
from jobcompd.producer_id import hasten_producer_id
from jobcompd.reports import InFlight, ReportHandling, SenderCounters, _reason, _rid_of
from jobcompd.sendloop import (
    PythonReports,
    Reports,
    channel,
    failures,
    produce_columns,
    produce_records,
    refusal_error,
)
from jobcompd.state import SpooledRecord, State, StateError
from jobcompd.threads import name_this_thread

__all__ = [
    "EARLY_WINDOW",
    "REPLAY_EARLY_WINDOW",
    "REPLAY_EARLY_WINDOW_BYTES",
    "REPLAY_WINDOW",
    "WINDOW",
    "Sender",
    "SenderCounters",
    "SenderThread",
]

RECORD_ID_HEADER = "record_id"
# librdkafka's statistics: which brokers are up. Some 50 kB of JSON made and read each time (per
# partition figures included): every 5 s that was a third of the CPU of an idle daemon.
_STATS_INTERVAL_MS = 15_000
# Memory is bounded by bytes too, not only by records (a record may be a few hundred bytes or
# hundreds of kB); for the usual ~1 kB record the counts bound first, as they did alone:
# Records handed to librdkafka and not yet reported, at most: at 50,000 records/s that is 50 ms of
# records, several round trips to a broker; librdkafka holds a copy of each, so it is memory too.
WINDOW = 2_500
# replay's batches are 2,000 lines, the daemon's about 1,300 (512 KiB read at a time): with less
# than two batches' room, the reader runs ahead of the sender, which reads everything back.
REPLAY_WINDOW = 5_000
# Batches produced before their commit (send_batch_early) and not acknowledged yet, with the records
# in flight, at most: what Kafka acknowledges in the time a batch waits for it (tens of ms), not
# more, so that brokers down or slow hold little in librdkafka (the batches after are spooled).
EARLY_WINDOW = 6_000
_EARLY_WINDOW_BYTES = 5 << 20
# … replay's: it reads a file as fast as it can, and six of its batches in Kafka's hands (not
# three) made it a fifth faster (`run` was not faster with it, and held more memory).
REPLAY_EARLY_WINDOW = 12_000
REPLAY_EARLY_WINDOW_BYTES = 10 << 20
_EARLY_STALL_S = 0.02
_OFFERED_BYTES = 8 << 20  # payloads of batches offered and not yet sent, at most (~7 batches)
# … and while the window is full: a batch or two, what the sender takes next once reports come
# (replay fills the window before each offer); not the 8 MiB that would wait while brokers are down.
_OFFERED_BYTES_WINDOW_FULL = 2 << 20
_WINDOW_BYTES = 8 << 20  # payloads handed to librdkafka and not yet reported, at most (about)
_STATE_RETRY_S = 1.0  # after the state refused to settle reports (disk full), wait before trying again
_DELIVERING_S = 1.0  # a sender that delivered within this long is moving: offers wait for it
_OFFER_WAIT_S = 1.0  # how long the daemon's reader waits for room among the offered batches
# With nothing in flight, the sender wakes this often at least (or poll_interval, if longer) to serve
# librdkafka's events (a broker down, statistics) and look for records spooled from elsewhere. Each
# such wake-up costs ~0.4 ms of CPU, its code out of the caches after the wait.
_IDLE_POLL_S = 5.0
_PAYLOAD = operator.attrgetter("payload")
_UNCOMMITTED = 0  # the seq of a record in flight whose batch is not committed yet (seqs start at 1)


class _EarlyBatch:
    """A batch produced before its commit (:meth:`Sender.send_batch_early`): its records produced
    (ids, job ids, payload sizes), and the ids of those Kafka acknowledged, and of those it
    reported failed, so far."""

    __slots__ = ("acked", "at", "failed", "jobids", "rids", "sizes")

    def __init__(self, rids: Sequence[str], jobids: Sequence[int], sizes: Sequence[int]) -> None:
        self.rids, self.jobids, self.sizes = rids, jobids, sizes
        self.acked: set[str] = set()
        self.failed: set[str] = set()
        self.at = time.monotonic()

    def done(self) -> bool:
        return len(self.acked) + len(self.failed) >= len(self.rids)


def _split_by_rid(
    keys: list[bytes | None], rids: AbstractSet[str]
) -> tuple[list[bytes | None], list[bytes | None]]:
    """Of reports' message ``keys``, those of records in ``rids``, and the others, in their order."""
    inside: list[bytes | None] = []
    outside: list[bytes | None] = []
    for key in keys:
        (inside if _rid_of(key) in rids else outside).append(key)
    return inside, outside


def payload_bytes(records: Sequence[SpooledRecord]) -> int:
    """The size of the payloads of ``records``."""
    return sum(map(len, map(_PAYLOAD, records)))


class Sender(ReportHandling):
    """Moves spooled records to Kafka and settles each one by its delivery report.

    ``window`` bounds the records handed to librdkafka and not yet reported (and ``window_bytes``
    their payloads); the spool, not librdkafka's queue, is where the backlog waits.
    ``early_window`` (and ``early_window_bytes``) bounds them with those of the batches produced
    before their commit, while Kafka acknowledges records as they go (:meth:`_early_room`).
    """

    def __init__(
        self,
        state: State,
        kafka: KafkaSettings,
        *,
        debug_jobcomp: bool = False,
        window: int = WINDOW,
        window_bytes: int = _WINDOW_BYTES,
        early_window: int = EARLY_WINDOW,
        early_window_bytes: int = _EARLY_WINDOW_BYTES,
        fetch: int = 1_000,
        logger: Any = None,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
    ) -> None:
        self._state = state
        self._kafka = kafka
        self._debug = debug_jobcomp
        self._window = window
        self._window_bytes = window_bytes
        self._early_window, self._early_window_bytes = early_window, early_window_bytes
        self._in_flight_bytes = 0
        self._fetch = fetch
        self._log = logger or structlog.get_logger("jobcompd.producer")
        self._quiet = Quieter(self._log)
        self._factory = producer_factory
        self._producer: Producer | None = None
        # The producer's channel (jobcompd.sendloop.channel): records produced through it, and
        # how each ended; None where confluent-kafka's produce() and reports serve.
        self._channel: Any = None
        self._cursor = 0  # highest spool seq handed to librdkafka
        self._in_flight: dict[str, InFlight] = {}
        self._backlog: list[SpooledRecord] = []  # fetched, not yet accepted by librdkafka
        # Batches just spooled, handed over by the reader (another thread, in the daemon), with
        # the bytes of their payloads.
        self._offered: collections.deque[tuple[Sequence[SpooledRecord], int]] = collections.deque()
        self._offered_bytes = 0
        self._offered_lock = threading.Lock()
        self._offered_taken = threading.Condition(self._offered_lock)  # the sender took some
        self._reports = Reports()
        # The send side — producing, the cursor, the backlog, what is in flight, settling — is used
        # by the sender's thread and, through send_now, by the reader's.
        self._send_lock = threading.RLock()
        self._rebuild = False
        # Records produced before their batch was committed (send_early), by record id: in flight
        # with seq _UNCOMMITTED until confirm() gives them theirs; reports for them wait meanwhile.
        self._early: set[str] = set()
        self._early_delivered: list[bytes | None] = []
        self._early_failed: list[tuple[KafkaError, Message]] = []
        # Batches produced before their commit (send_batch_early), by a number of their own, and
        # the number of each of their records not reported yet; their records and payload bytes
        # (counted in the window, not in flight). The condition guards these, and is notified as
        # their reports come; taken after the send lock where both are.
        self._batches: dict[int, _EarlyBatch] = {}
        self._batch_of: dict[str, int] = {}
        self._batch_number = 0
        self._early_records = self._early_bytes = 0
        self._acked_at = float("-inf")  # when a report that says delivered was last served
        self._acked = threading.Condition(threading.Lock())
        self._unsettled: list[tuple[int, int]] = []
        self._unsettled_since = 0.0
        self._spool_exhausted = False
        self._fetched_at = 0.0
        self._sending_since = 0.0  # when records were last produced with nothing in flight
        self._partitions = Partitions(self._log)
        self._made = 0  # producers made (and let go): jobcompd.producer_id asks for the newest
        self.counters = SenderCounters()

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def kafka(self) -> KafkaSettings:
        """The Kafka settings in force."""
        return self._kafka

    def start(self) -> None:
        """Create the librdkafka producer (idempotent)."""
        if self._producer is None:
            self._producer, self._channel = self._new_producer(self._kafka)
            self._log.debug("producer made", sending=self.sending)

    def _new_producer(self, kafka: KafkaSettings) -> tuple[Any, Any]:
        """A producer for ``kafka``, and its channel (``None`` if it has none); an idempotent one
        asks for its producer id as soon as it can (:mod:`jobcompd.producer_id`)."""
        producer, made = self._make_producer(kafka)
        self._made += 1
        if kafka.idempotent:
            mine, delivered = self._made, self.counters.delivered
            hasten_producer_id(
                producer, kafka.topic, lambda: self._made != mine or self.counters.delivered > delivered
            )
        return producer, made

    def _make_producer(self, kafka: KafkaSettings) -> tuple[Any, Any]:
        made, plugin = (None, {}) if self._debug else channel()
        conf: dict[str, Any] = dict(kafka.producer_config())
        # The report collector (jobcompd.sendloop.Reports) is the callback itself, unless
        # debug_jobcomp logs each delivery too.
        conf["on_delivery"] = self._on_delivery if self._debug else self._reports
        conf["error_cb"] = self._on_error
        conf["stats_cb"] = self._on_stats
        conf.setdefault("statistics.interval.ms", _STATS_INTERVAL_MS)
        conf.setdefault("logger", librdkafka_logger())
        if made is None:
            return self._factory(conf), None
        # The channel's plugin first, so that it handles its property; a site's own plugins after.
        paths = [plugin["plugin.library.paths"], *filter(None, [conf.get("plugin.library.paths")])]
        try:
            producer = self._factory({**plugin, **conf, "plugin.library.paths": ";".join(paths)})
        except KafkaException as exc:
            producer = self._factory(conf)  # raises what is wrong with the settings, if anything is
            self._log.warning("sending through confluent-kafka's produce(): the channel's plugin "
                              "was refused", error=str(exc))
            return producer, None
        # A channel serves confluent-kafka's own Producer, once its plugin was given the client.
        if not (made.connected and type(producer).produce is Producer.produce):
            return producer, None
        return producer, made

    def reconfigure(self, kafka: KafkaSettings) -> None:
        """Apply new settings: topic and params at once; new librdkafka properties rebuild the producer.

        All or nothing: the new producer is created before the old one is let go, so settings it
        refuses raise and leave the running producer and settings as they were. A rebuild then
        flushes what is in flight (up to ``flush_timeout``), purges the rest, and sends it again
        from the spool with the new producer — nothing is lost, and what Kafka acknowledged is not
        sent twice.
        """
        rebuild = dict(kafka.producer_config()) != dict(self._kafka.producer_config())
        with self._send_lock:
            if kafka.topic != self._kafka.topic:
                self._partitions.forget()
            if rebuild and self._producer is not None:
                new = self._new_producer(kafka)  # raises on settings librdkafka refuses
                self._log.info("rebuilding producer for changed librdkafka properties")
                self._drain(self._kafka.params.flush_timeout)
                self._producer, self._channel = new
            self._kafka = kafka

    def close(self, flush_timeout_ms: int | None = None) -> int:
        """Stop: flush up to ``flush_timeout`` ms, settle reports; return what is left unacknowledged.

        Whatever is left stays in the spool and is sent again at the next start.
        """
        with self._send_lock:
            if self._producer is None:
                return 0
            if flush_timeout_ms is None:
                flush_timeout_ms = self._kafka.params.flush_timeout
            self._drain(flush_timeout_ms)
            self._producer = self._channel = None
            self._made += 1  # (the producer let go)
        return self._state.spool_depth()

    def _drain(self, flush_timeout_ms: int) -> None:
        with self._send_lock:
            self._drain_locked(flush_timeout_ms)

    def _drain_locked(self, flush_timeout_ms: int) -> None:
        producer = self._producer
        assert producer is not None
        self._backlog.clear()
        with self._offered_lock:
            self._offered.clear()
            self._offered_bytes = 0
            self._offered_taken.notify_all()
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
        self._take_reports()
        self._sort_reports()
        with self._acked:  # the records of batches sent before their commit not reported now never
            for batch in self._batches.values():  # will be: spooled at the commit, sent again
                batch.failed.update(rid for rid in batch.rids if rid not in batch.acked)
            self._batch_of.clear()
        self._settle()
        self._settle_unsettled()
        # Anything still unreported stays in the spool; start over from its first record.
        self._backlog.clear()
        # Records sent early whose batch is not committed yet stay in flight if they were reported
        # (settled once confirmed); the others are sent again once their batch is spooled.
        reported = {*map(_rid_of, self._early_delivered), *(_rid_of(m) for _, m in self._early_failed)}
        kept = {rid: self._in_flight[rid] for rid in reported & self._early if rid in self._in_flight}
        self._in_flight.clear()
        self._in_flight.update(kept)
        self._in_flight_bytes = sum(entry[2] for entry in kept.values())
        self._early.intersection_update(kept)
        self._cursor = 0
        self._spool_exhausted = False

    @property
    def sending(self) -> str:
        """How records go to librdkafka: ``"channel"`` (the compiled send loop's, without the
        interpreter lock) or ``"produce()"`` (confluent-kafka's); ``"not yet"`` before :meth:`start`."""
        if self._producer is None:
            return "not yet"
        return "produce()" if self._channel is None else "channel"

    # -- the work ----------------------------------------------------------------------------

    def idle(self) -> bool:
        """Nothing in flight or waiting to be settled, nothing offered, nothing in the spool beyond
        what was already sent, and no rebuild of the producer due (it sends the spool again: the
        reports of a fatal error can all be in before the rebuild)."""
        return (
            not self._rebuild
            and not self._in_flight
            and not self._batches
            and not self._unsettled
            and not self._backlog
            and not self._offered
            and self._spool_exhausted
        )

    def pump(self, timeout: float = 0.1) -> int:
        """Produce what the window allows, serve delivery reports for up to ``timeout`` s, and settle
        them once due (a batch at a time, see ``_settle_due``).

        Returns the number of delivery reports settled.
        """
        with self._send_lock:
            if self._producer is None:
                self.start()
            if self._rebuild:
                self._rebuild_after_fatal()
            self._partitions.look_up(self._producer, self._kafka)
            self._produce_more()
            producer = self._producer
        assert producer is not None
        try:
            producer.poll(self._settle_wait(timeout))
        except KafkaException as exc:
            # confluent-kafka raises a fatal error (e.g. the idempotent producer lost its
            # sequence) from poll(): recreate the producer and send the spool again.
            self._on_error(exc.args[0])
        with self._send_lock:
            self._take_reports()
            self._sort_reports()
        settled = self._settle() if self._settle_due() else 0
        self._quiet.flush()
        return settled

    def _sort_reports(self) -> None:
        """The reports of records of batches produced before their commit
        (:meth:`send_batch_early`) are set aside with their batch, for :meth:`take_acked`, and
        those of records produced by :meth:`send_early` that say delivered, for
        :meth:`take_early_acked`; and when a report that says delivered last came is noted
        (:meth:`_early_room`)."""
        reports = self._reports
        if reports.delivered:
            self._acked_at = time.monotonic()
        if self._batch_of:
            self._sort_batches(reports)
        if self._early and reports.delivered:
            early, reports.delivered = _split_by_rid(reports.delivered, self._early)
            self._early_delivered += early

    def _sort_batches(self, reports: PythonReports) -> None:
        batch_of = self._batch_of
        with self._acked:
            rest: list[bytes | None] = []
            for key in reports.delivered:
                rid = key.decode() if isinstance(key, bytes) else ""
                number = batch_of.pop(rid, None)
                if number is None:
                    rest.append(key)
                else:
                    self._batches[number].acked.add(rid)
            failed = []
            for error, message in reports.failed:
                rid = _rid_of(message)
                number = batch_of.pop(rid, None)
                if number is None:
                    failed.append((error, message))
                else:  # sent again once spooled, where its failure is dealt with
                    self._batches[number].failed.add(rid)
            if len(rest) + len(failed) < len(reports.delivered) + len(reports.failed):
                reports.delivered, reports.failed = rest, failed
                self._acked.notify_all()

    def _take_reports(self) -> None:
        """The reports of the records produced through the channel, with the others served."""
        if self._channel is not None and (failed := self._channel.take(self._reports)):
            self._reports.failed += failures(failed)

    def wake(self) -> None:
        """New records were spooled: look for them at the next pump."""
        self._spool_exhausted = False

    def send_now(self, records: Sequence[SpooledRecord]) -> bool:
        """Produce records just spooled on the caller's thread, if the sender is caught up: nothing
        fetched and waiting, these next in the spool, room for them all in the window, and the send
        side not busy. ``False``: nothing was done (:meth:`offer` them instead)."""
        if not records or not self._send_lock.acquire(blocking=False):
            return False
        try:
            if (
                self._producer is None
                or self._rebuild
                or self._backlog
                or records[0].seq != self._cursor + 1
                or len(records) > self._room()
            ):
                return False
            self._cursor = records[-1].seq
            self._backlog = list(reversed(records))  # what librdkafka refuses waits for the sender
            self._produce_backlog(len(records))
            return True
        finally:
            self._send_lock.release()

    def send_early(self, rids: Sequence[str], jobids: Sequence[int], payloads: Sequence[bytes]) -> int:
        """Produce records read and not yet committed, on the caller's thread, so that a trickle's
        records wait for Kafka while their batch is flushed to disk, not after it. Only when the
        sender is caught up (nothing fetched, offered or left in the spool to send, room for them
        all) and the send side is free; records already in flight are not produced again (a batch
        whose commit failed, read again), and one librdkafka refuses stops it (it and the rest are
        sent once spooled, where a refusal is dealt with). Returns how many were produced; call
        :meth:`confirm` with the batch's spooled records once it is committed.

        A record so produced is settled only once confirmed (its report waits until then). If its
        batch is never committed (the state refused it, then jobcompd stopped), its lines are read
        again at the next start and it is sent again: a duplicate, as after a crash.
        """
        if not rids or not self._send_lock.acquire(blocking=False):
            return 0
        try:
            producer = self._producer
            if (
                producer is None
                or self._rebuild
                or self._backlog
                or self._offered
                or not self._spool_exhausted
                or len(rids) > self._room()
            ):
                return 0
            produce = producer.produce
            topic = self._kafka.topic
            partition = self._partitions.next(self._kafka)
            in_flight = self._in_flight
            early = self._early
            if not in_flight:
                self._sending_since = time.time()
            sent = size = 0
            for rid, jobid, payload in zip(rids, jobids, payloads, strict=True):
                if rid not in in_flight:
                    try:
                        produce(topic, payload, rid, partition, None, None, 0, [(RECORD_ID_HEADER, rid)])
                    except (BufferError, KafkaException):
                        break
                    in_flight[rid] = (_UNCOMMITTED, jobid, len(payload))
                    early.add(rid)
                    size += len(payload)
                    sent += 1
            self._in_flight_bytes += size
            self.counters.produced += sent
            return sent
        finally:
            self._send_lock.release()

    def take_early_acked(self, rids: Sequence[str]) -> set[str]:
        """Of ``rids``, records produced by :meth:`send_early` whose batch is not committed yet,
        those Kafka acknowledged already: no longer in flight, counted delivered here. The
        caller's commit takes them as delivered (known, never spooled); :meth:`confirm` the others
        once it is done."""
        with self._send_lock:
            if not self._early_delivered:
                return set()
            taken, kept = _split_by_rid(self._early_delivered, self._early.intersection(rids))
            acked = set(map(_rid_of, taken))
            if acked:
                self._early_delivered = kept
                self._early -= acked
                entries = [self._in_flight.pop(rid, None) for rid in acked]
                self._in_flight_bytes -= sum(entry[2] for entry in entries if entry is not None)
                self.counters.delivered += len(acked)
                self.counters.last_delivery_at = time.time()
            return acked

    def send_parsed(self, parsed: RecordBatch) -> int:
        """A big batch just parsed (on the parse thread): its new records go to Kafka before the
        batch is committed (:meth:`send_batch_early`), if the sender is caught up and Kafka
        acknowledges records as they go (:meth:`acknowledging`: a burst's first batch, or any
        while brokers are down, is spooled first, and what librdkafka holds stays what it was).
        Records whose ids are known already are left out, as the commit leaves them. The batch's
        number, or 0 if nothing was sent."""
        if not self.acknowledging() or not self.early_room(len(parsed.rids)):
            return 0
        try:
            rids, jobids, payloads = self._state.new_among(parsed.rids, parsed.jobids, parsed.payloads)
        except StateError:
            return 0  # the commit says what is wrong
        return self.send_batch_early(rids, jobids, payloads)

    def send_batch_early(self, rids: list[str], jobids: list[int], payloads: list[bytes]) -> int:
        """Produce a batch read and not yet committed, on the caller's thread, so that Kafka
        acknowledges its records before the commit: :meth:`take_acked` then says which, and the
        commit spools only the others. Only when the sender is caught up (nothing fetched, offered
        or left in the spool to send, room for them all) and none of them is in flight. Returns the
        batch's number (0: nothing was produced). Thread-safe."""
        if not rids:
            return 0
        with self._send_lock:
            producer = self._producer
            if (
                producer is None
                or self._debug  # (each delivery logged: the records in flight say which job)
                or self._rebuild
                or self._backlog
                or self._offered
                or not self._spool_exhausted
                or not self._early_room(len(rids), sum(map(len, payloads)))
                or (self._in_flight and not self._in_flight.keys().isdisjoint(rids))
            ):
                return 0
            topic = self._kafka.topic
            partition = self._partitions.next(self._kafka)
            through = self._channel
            if through is not None:
                sent, size, exc = through.produce_columns(
                    producer, topic, partition, rids, payloads, 0, RECORD_ID_HEADER)
                if isinstance(exc, tuple):
                    exc = refusal_error(exc)
            else:
                sent, size, exc = produce_columns(
                    producer.produce, topic, partition, rids, payloads, 0, RECORD_ID_HEADER)
            self.counters.produced += sent
            if exc is not None and not isinstance(exc, BufferError | KafkaException):
                raise exc
            if not sent:
                return 0
            if not self._in_flight and not self._early_records:
                self._sending_since = time.time()
            whole = sent == len(rids)
            batch = _EarlyBatch(
                rids if whole else rids[:sent],
                jobids if whole else jobids[:sent],
                list(map(len, payloads if whole else payloads[:sent])),
            )
            with self._acked:
                self._batch_number += 1
                number = self._batch_number
                self._batches[number] = batch
                self._batch_of.update(dict.fromkeys(batch.rids, number))
                self._early_records += sent
                self._early_bytes += size
            return number

    def sent_at(self, number: int) -> float:
        """When batch ``number`` was produced (its ``time.monotonic()``; 0 if it is gone)."""
        batch = self._batches.get(number)
        return 0.0 if batch is None else batch.at

    def reported(self, number: int) -> bool:
        """Whether every record of batch ``number`` was reported (or the batch is gone)."""
        batch = self._batches.get(number)
        return batch is None or batch.done()

    def wait_reported(self, number: int, timeout: float) -> None:
        """Wait up to ``timeout`` s for batch ``number`` to be reported, or for the next report."""
        with self._acked:
            if not self.reported(number):
                self._acked.wait(timeout)

    def take_acked(self, number: int) -> set[str]:
        """The record ids of batch ``number`` (:meth:`send_batch_early`) that Kafka acknowledged,
        counted delivered here (the caller's commit makes them known and delivered). The others
        not reported yet are in flight from now on, until their batch is committed
        (:meth:`confirm`); those reported failed are sent again once spooled."""
        with self._send_lock, self._acked:
            batch = self._batches.pop(number, None)
            if batch is None:
                return set()
            self._early_records -= len(batch.rids)
            self._early_bytes -= sum(batch.sizes)
            acked = batch.acked
            if len(acked) < len(batch.rids):  # the others not reported yet are in flight from now on
                failed, batch_of = batch.failed, self._batch_of
                in_flight, early, size = self._in_flight, self._early, 0
                for rid, jobid, length in zip(batch.rids, batch.jobids, batch.sizes, strict=True):
                    if rid not in acked and rid not in failed:
                        batch_of.pop(rid, None)
                        in_flight[rid] = (_UNCOMMITTED, jobid, length)
                        early.add(rid)
                        size += length
                self._in_flight_bytes += size
            if acked:
                self.counters.delivered += len(acked)
                self.counters.last_delivery_at = time.time()
            return acked

    def delivered_of(self, number: int, rids: Sequence[str]) -> Sequence[int]:
        """The indexes in ``rids`` (a batch's records as read) of the records of batch ``number``
        that Kafka acknowledged: what the batch's commit takes as delivered (:meth:`take_acked`)."""
        acked = self.take_acked(number)
        return range(len(rids)) if len(acked) == len(rids) else [
            i for i, rid in enumerate(rids) if rid in acked]

    def confirm(self, records: Sequence[SpooledRecord]) -> Sequence[SpooledRecord]:
        """``records`` (`BatchResult.fresh`) are committed: those produced by :meth:`send_early`
        get their seqs (their reports are settled now), and the others are returned, to be sent
        as usual (:meth:`send_now`, :meth:`offer`)."""
        if not self._early or not records:
            return records
        with self._send_lock:
            early = self._early
            in_flight = self._in_flight
            rest: list[SpooledRecord] = []
            for record in records:
                rid = record.rid
                entry = in_flight.get(rid) if rid in early else None
                if entry is None:
                    rest.append(record)  # not produced early (or the producer was rebuilt since)
                    continue
                early.discard(rid)
                in_flight[rid] = (record.seq, entry[1], entry[2])
            if rest and len(rest) < len(records) and records[0].seq == self._cursor + 1:
                # Sent up to the first of the rest: it comes next.
                self._cursor = rest[0].seq - 1
            elif not rest and records[0].seq == self._cursor + 1:
                self._cursor = records[-1].seq
            # (Otherwise the sender reads the spool in its turn, passing over what is in flight.)
            if self._early_delivered or self._early_failed:
                reports = self._reports
                if not reports.delivered and not reports.failed:
                    reports.since = time.monotonic()
                reports.delivered += self._early_delivered
                reports.failed += self._early_failed
                self._early_delivered, self._early_failed = [], []
        return rest

    def offer(self, records: Sequence[SpooledRecord], *, size: int | None = None, wait: float = 0.0) -> bool:
        """Records just spooled (`BatchResult.fresh`), to send without reading them back; thread-safe.

        They are sent from memory when they come next in the spool, right after what was already
        sent. Offered batches are bounded: ``_OFFERED_BYTES`` of them, or
        ``_OFFERED_BYTES_WINDOW_FULL`` while the window is full. Past the bound, while the sender
        is delivering, the caller waits up to ``wait`` seconds for the sender to take some (flow
        control: a reader ahead of the sender would only make it read everything back from the
        spool). A sender that still has no room, or delivers nothing (brokers down or slow), drops
        what it holds and what it is offered, so a backlog waits in the spool, not in memory.
        ``False``: dropped; call :meth:`wake`, and they are read from the spool in their turn.
        ``size``: the bytes of their payloads, when known (`BatchResult.fresh_bytes`).
        """
        if not records:
            return True
        if size is None:
            size = payload_bytes(records)
        with self._offered_lock:
            if wait > 0 and not self._takes(size) and self.delivering():
                self._offered_taken.wait_for(lambda: self._takes(size), timeout=wait)
            if not self._takes(size):
                self._offered.clear()
                self._offered_bytes = 0
                return False
            self._offered.append((records, size))
            self._offered_bytes += size
        return True

    def takes(self, size: int) -> bool:
        """Whether :meth:`offer` would take records of ``size`` bytes of payloads now, without
        dropping anything."""
        with self._offered_lock:
            return self._takes(size)

    def _takes(self, size: int) -> bool:
        bound = _OFFERED_BYTES if self._room() else _OFFERED_BYTES_WINDOW_FULL
        return not self._offered or self._offered_bytes + size <= bound

    def delivering(self) -> bool:
        """Whether the sender moves: it has nothing in flight, or a record was delivered (or
        sending began after a time with nothing in flight) within the last second. Not so while
        brokers are down or slow."""
        if not self._in_flight:
            return True
        last = max(self.counters.last_delivery_at or 0.0, self._sending_since)
        return time.time() - last < _DELIVERING_S

    def _next_offered(self) -> Sequence[SpooledRecord] | None:
        """The offered records that come next in the spool, if some were offered. A batch's seqs
        follow each other: the part of one already read back from the spool is cut off, and one
        that comes later waits while what is before it is read back, so the sender gets back to
        sending from memory after reading back."""
        with self._offered_lock:
            while self._offered:
                records, size = self._offered[0]
                sent = self._cursor + 1 - records[0].seq
                if sent < 0:
                    # Comes later: what is before it is read from the spool first — now, not at
                    # the next poll_interval (records sent early may lie between, in flight).
                    self._spool_exhausted = False
                    return None
                self._offered.popleft()
                self._offered_bytes -= size
                self._offered_taken.notify_all()
                if sent < len(records):
                    return records[sent:] if sent else records
        return None

    def acknowledging(self) -> bool:
        """Whether Kafka acknowledges records as they go: a report that says delivered came
        within ``_EARLY_STALL_S``."""
        return time.monotonic() - self._acked_at <= _EARLY_STALL_S

    def early_room(self, records: int) -> bool:
        """Whether a batch of ``records`` (of the usual size) would fit :meth:`send_batch_early`'s window."""
        return self._early_room(records, records * 1024)

    def _early_room(self, records: int, size: int) -> bool:
        """Whether a batch of ``records`` and ``size`` bytes of payloads fits the window of batches
        produced before their commit (with the records in flight): the early window
        (``EARLY_WINDOW`` records and ``_EARLY_WINDOW_BYTES`` unless given) while Kafka
        acknowledges records as they go (one came within ``_EARLY_STALL_S``), else the usual
        window — brokers down or slow hold no more in librdkafka than without it."""
        held = len(self._in_flight) + self._early_records
        held_bytes = self._in_flight_bytes + self._early_bytes
        window = max(self._window, self._early_window)
        if held and not self.acknowledging():
            window = self._window  # Kafka is not acknowledging as records go: the usual window
        return held + records <= window and (not held or held_bytes + size <= self._early_window_bytes)

    def _room(self) -> int:
        """How many more records the window takes (0 once its records or its bytes are full)."""
        if self._in_flight_bytes + self._early_bytes >= self._window_bytes:
            return 0
        return max(0, self._window - len(self._in_flight) - self._early_records)

    def _produce_more(self) -> None:
        if self._spool_exhausted and (
            time.monotonic() - self._fetched_at >= self._kafka.params.poll_interval
        ):
            # Records can reach the spool from elsewhere (``deadletter retry``): look again now
            # and then, at the plugin's poll_interval.
            self._spool_exhausted = False
        while room := self._room():
            if not self._backlog:
                batch = self._next_offered()
                if batch is None:
                    if self._spool_exhausted:
                        return
                    # Settled first: a record delivered and not settled yet is still spooled,
                    # and out of flight (sent early, it may lie past the cursor).
                    self._settle_unsettled()
                    self._fetched_at = time.monotonic()
                    batch = self._state.pending(after_seq=self._cursor, limit=self._fetch, whole_rows=True)
                    if len(batch) < self._fetch:
                        self._spool_exhausted = True
                    if not batch:
                        return
                    if in_flight := self._in_flight:
                        # Produced early and committed after other records: in flight already.
                        cursor = batch[-1].seq
                        batch = [record for record in batch if record.rid not in in_flight]
                        if not batch:
                            self._cursor = cursor
                            continue
                self._cursor = batch[-1].seq
                self._backlog = list(reversed(batch))  # pop() from the end keeps spool order
            if not self._produce_backlog(room):
                return

    def _produce_backlog(self, room: int) -> bool:
        """Hand up to ``room`` records from the end of the backlog to librdkafka, while the window's
        bytes allow; ``False`` when librdkafka refused one (backpressure, or a fatal error).

        Their payloads are not kept: librdkafka has a copy, and a report that asks for a record
        again (a timeout to requeue) brings it back.
        """
        producer = self._producer
        assert producer is not None
        produce = producer.produce
        through = self._channel
        topic = self._kafka.topic
        partition = self._partitions.next(self._kafka)
        backlog = self._backlog
        in_flight = self._in_flight
        budget = self._window_bytes - self._in_flight_bytes
        end = max(0, len(backlog) - room)
        if not in_flight:
            self._sending_since = time.time()
        sent = size = 0
        try:
            while True:
                if through is not None:
                    handed, handed_bytes, exc = through.produce_records(
                        producer, topic, partition, backlog, end, budget - size, in_flight, RECORD_ID_HEADER
                    )
                    if isinstance(exc, tuple):
                        exc = refusal_error(exc)
                else:
                    handed, handed_bytes, exc = produce_records(
                        produce, topic, partition, backlog, end, budget - size, in_flight, RECORD_ID_HEADER
                    )
                sent += handed
                size += handed_bytes
                if exc is None:
                    return True
                if not isinstance(exc, BufferError | KafkaException):
                    raise exc
                if not self._refused(backlog[-1], exc):
                    return False
                backlog.pop()
        finally:
            self._in_flight_bytes += size
            self.counters.produced += sent

    def _refused(self, record: SpooledRecord, exc: BufferError | KafkaException) -> bool:
        """librdkafka refused ``record``: ``True`` if the record is at fault (it is dead-lettered),
        ``False`` if librdkafka is (a full queue: wait; a fatal error: rebuild the producer)."""
        if isinstance(exc, BufferError):
            self.counters.backpressure_waits += 1
            return False
        error: KafkaError = exc.args[0]
        if self._partitions.gone(error, self._kafka):
            return False  # sent again, by its key
        # A producer in a fatal state refuses every record with _FATAL, whose error object
        # does not always say fatal(): the producer is at fault, not the record.
        if error.fatal() or error.code() in PRODUCER_STATE:
            self._log.error("producer fatal error", error=_reason(error))
            self._rebuild = True
            return False
        reason = _reason(error)
        event = "record refused by librdkafka, dead-lettered"
        self._dead_lettered(record.jobid, record.rid, reason, event)
        self._state.dead_letter_many({record.seq: reason})
        self.counters.dead_lettered += 1
        return True


class SenderThread(threading.Thread):
    """Runs :class:`Sender` on its own thread; other threads talk to it through :meth:`call`."""

    def __init__(self, sender: Sender, log: Any) -> None:
        super().__init__(name="jobcompd-sender", daemon=True)
        self.sender = sender
        self._log = log
        self._wake = threading.Event()
        self._look = False  # records were spooled and not offered: read the spool
        self._halt = threading.Event()  # not _stop: that would shadow Thread._stop()
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self.error: BaseException | None = None
        self.left_in_spool = 0

    def send_early(self, rids: Sequence[str], jobids: Sequence[int], payloads: Sequence[bytes]) -> int:
        """Records read, about to be committed: :meth:`Sender.send_early`."""
        sent = self.sender.send_early(rids, jobids, payloads)
        if sent:
            self._wake.set()  # to serve their reports
        return sent

    def send_parsed(self, parsed: RecordBatch) -> int:
        """A big batch just parsed, to be committed once Kafka acknowledged it: :meth:`Sender.send_parsed`."""
        number = self.sender.send_parsed(parsed)
        if number:
            self._wake.set()  # to serve their reports
        return number

    def offer(self, records: Sequence[SpooledRecord], *, size: int | None = None) -> None:
        """New records are in the spool, and here they are: those sent early are confirmed
        (:meth:`Sender.confirm`), the others produced at once if the sender is caught up
        (:meth:`Sender.send_now`), else left for the sender (:meth:`Sender.offer`) or, if it holds
        too much, for it to read from the spool. ``size``: the bytes of their payloads, when known
        (`BatchResult.fresh_bytes`)."""
        sender = self.sender
        rest = sender.confirm(records)
        if not rest or sender.send_now(rest):
            self._wake.set()
            return
        self._wake.set()  # (it takes offered batches as its window empties)
        if not sender.offer(rest, size=size if rest is records else None, wait=_OFFER_WAIT_S):
            self._look = True
            self._wake.set()

    def call(self, fn: Callable[[], Any], timeout: float | None = None) -> Any:
        """Run ``fn`` on the sender thread (the producer is not thread-safe) and return its result."""
        reply: queue.Queue[Any] = queue.Queue(maxsize=1)
        self._calls.put((fn, reply))
        self._wake.set()
        ok, value = reply.get(timeout=timeout)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    def run(self) -> None:
        name_this_thread(self.name)
        sender = self.sender
        idle_wait = max(0.05, float(sender.kafka.params.poll_interval), _IDLE_POLL_S)
        try:
            sender.start()
            while not self._halt.is_set():
                self._serve_calls()
                if self._wake.is_set():
                    self._wake.clear()
                    if self._look:
                        self._look = False
                        sender.wake()
                if sender.idle():
                    # Nothing in flight: sleep until a batch is committed (or a while passes, to
                    # serve librdkafka's events and pick up records that reach the spool another way).
                    self._wake.wait(idle_wait)
                    sender.pump(0)
                else:
                    try:
                        sender.pump(0.05)
                    except StateError as exc:
                        self._log.error("state error while settling deliveries", error=str(exc))
                        time.sleep(_STATE_RETRY_S)
            self._serve_calls()
        except BaseException as exc:  # pragma: no cover - surfaced by the main loop
            self.error = exc
            self._log.exception("sender thread failed")
        finally:
            try:
                self.left_in_spool = sender.close()
            except Exception as exc:  # pragma: no cover
                self._log.error("closing the producer failed", error=str(exc))

    def _serve_calls(self) -> None:
        while True:
            try:
                fn, reply = self._calls.get_nowait()
            except queue.Empty:
                return
            try:
                reply.put((True, fn()))
            except Exception as exc:
                reply.put((False, exc))
