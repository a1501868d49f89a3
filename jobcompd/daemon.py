"""``jobcompd run``: the long-running daemon — tail the log, spool durably, send, reload, notify.

Threads:

* the **main thread** reads: it asks the tailer for the next batch of complete lines and commits
  it (records, quarantined lines and the read position in one transaction), reading one batch
  ahead so that the parse worker parses batch n+1 while batch n is committed; it also serves
  signals (SIGTERM/SIGINT stop, SIGHUP reload), systemd notifications and the watchdog;
* the **parse thread** (the compiled reader's) parses a backlog's big batches and, while the
  sender is caught up, sends their records to Kafka at once (:meth:`Sender.send_parsed`): the main
  thread then commits such a batch once Kafka acknowledged its records (or 50 ms passed), those
  acknowledged as delivered, never spooled, the others spooled; meanwhile it reads the next
  batches (:meth:`ReadAhead.await_reports`). A few lines at a time (a trickle) are parsed by
  the main thread, their records sent before the commit too, and settled after it;
* the **sender thread** runs the producer worker: it produces from the spool and settles
  delivery reports, and is woken as soon as a batch is committed.

Above ``state.max_spool_records`` undelivered records the reader pauses (the log file is the
buffer) and says so in the log and the status.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from jobcompd import fastpath, logs
from jobcompd.batch import RecordBatch
from jobcompd.config import ConfigError, KafkaSettings, Settings, load_settings
from jobcompd.health import Health
from jobcompd.identity import LIVE, Position, position_key
from jobcompd.ingest import Ingestor, ReadAhead
from jobcompd.lock import StateDirLock
from jobcompd.monitoring import Monitoring
from jobcompd.producer import Sender, SenderThread
from jobcompd.state import BatchResult, State, StateError
from jobcompd.tailer import LineBatch, Tailer
from jobcompd.wakeup import Wakeup

if TYPE_CHECKING:
    from jobcompd.metrics import Metrics

__all__ = ["Daemon"]

# How often the log's path is looked at without an event, while events cannot tell every change
# (no log yet, a rotated file draining, lines held back); inotify wakes the reader at once. Once
# events tell every change, a look this often is only a safety net (Filebeat looks every 10 s).
_RECHECK_S = 2.0
_QUIET_RECHECK_S = 10.0
# The longest the main loop waits for lines, and how often it reports (STATUS= and health.json,
# the heartbeat `status` compares with `status.stall_s`). An idle turn costs ~0.5 ms of CPU, its
# code and data out of the caches after the wait: a turn every 2 s was a third of idle's CPU.
_IDLE_WAIT_S = 5.0
_STATE_RETRY_S = 1.0  # after a failed commit (disk full, read-only), wait before trying again
_BACKPRESSURE_CHECK_S = 0.5
_HEALTH_EVERY_S = _IDLE_WAIT_S
_TEXTFILE_EVERY_S = 15.0  # node_exporter's textfile: rewritten this often
# A trickle's reads, their records sent early, join one commit for this long: most of its records
# are acknowledged by then (linger.ms, 5 by default, and a round trip), and committed as delivered,
# never spooled. (A crash sends again what this long read: a duplicate each, with its record id.)
_GATHER_S = 0.050
_SLOW_TURN_S = 0.2  # a turn of the reader (lines read → committed) longer than this is logged
_PRUNE_EVERY_S = 600.0  # forget known ids past state.known_ids_days, in steps:


class Daemon(Monitoring):
    """Wires settings, state, tailer, ingestor and sender together and runs until stopped."""

    def __init__(self, settings: Settings, *, notifier: Any = None) -> None:
        self.settings = settings
        self._log = structlog.get_logger("jobcompd.daemon")
        self._quiet = logs.Quieter(self._log)
        self._lines_read = 0
        self._metrics: Metrics | None = None
        self._notifier = notifier
        # Set by signal handlers: events that take no lock to be set (see jobcompd.wakeup).
        self._stop = Wakeup()
        self._reload = Wakeup()
        self._health = Health(pid=os.getpid(), started_at=time.time(), reader=fastpath.PARSER)
        self._state: State | None = None
        self._tailer: Tailer | None = None
        self._sender: SenderThread | None = None
        self._ahead: ReadAhead | None = None  # batches read, not yet committed

    # -- signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._request_reload())

    def stop(self) -> None:
        """Ask the daemon to stop gracefully (thread- and signal-safe)."""
        self._stop.set()
        self._wake_reader()

    def _request_reload(self) -> None:
        self._reload.set()
        self._wake_reader()

    def _wake_reader(self) -> None:
        # The main loop waits for lines up to _IDLE_WAIT_S: a signal must not wait that long.
        if self._tailer is not None:
            self._tailer.wake()

    # -- run ---------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped; return the process exit status."""
        settings = self.settings
        lock = StateDirLock(settings.state.dir).acquire()
        try:
            self._state = State.open(settings.state.dir, synchronous=settings.state.synchronous)
            try:
                return self._run()
            finally:
                self._state.close()
        finally:
            lock.release()

    def _run(self) -> int:
        settings = self.settings
        state = self._state
        assert state is not None
        ingestor = Ingestor.configured(
            state, settings.source, settings.cluster, logger=structlog.get_logger("jobcompd.ingest")
        )
        sender = Sender(
            state,
            settings.kafka,
            debug_jobcomp=settings.log.debug_jobcomp,
            logger=structlog.get_logger("jobcompd.producer"),
        )
        self._sender = SenderThread(sender, self._log)
        self._sender.start()
        self._ahead = ReadAhead(ingestor, state)
        ingestor.send = self._sender.send_parsed
        self._tailer = Tailer(
            settings.source.path,
            lookup=self._lookup,
            known=self._known,
            start_at=settings.source.start_at,
            poll=settings.source.poll,
            max_line_bytes=settings.source.max_line_bytes,
            hold=ingestor.unfinished,
            recheck_interval=_RECHECK_S,
            quiet_recheck=_QUIET_RECHECK_S,
            logger=structlog.get_logger("jobcompd.tailer"),
        )
        self._tailer.start()
        self._start_metrics()
        depth = state.spool_depth()
        self._log.info(
            "jobcompd started",
            source=str(settings.source.path),
            topic=settings.kafka.topic,
            state_dir=str(settings.state.dir),
            spooled=depth,
            pid=os.getpid(),
            reader=fastpath.PARSER,
            parsing=ingestor.parsing,
        )
        for warning in settings.warnings:
            self._log.warning(warning)
        self._notify("READY=1", self._status_line(depth))
        self._report_health()
        try:
            self._loop()
        finally:
            self._notify("STOPPING=1")
            self._log.info("stopping")
            try:
                self._commit_held(self._ahead, self._sender)  # type: ignore[arg-type]
            except Exception as exc:  # (stopping: what is not committed is read again)
                self._log.error("cannot commit the batches held", error=repr(exc))
            if self._metrics is not None:
                self._metrics.close()
            self._tailer.stop()
            ingestor.close()
            self._sender.stop()
            flush_ms = self.settings.kafka.params.flush_timeout
            self._sender.join(timeout=None if flush_ms < 0 else flush_ms / 1000 + 5)
            self._log.info("stopped", left_in_spool=self._sender.left_in_spool)
        if self._sender.error is not None:
            return 1
        return 0

    def _loop(self) -> None:
        state = self._state
        tailer = self._tailer
        sender = self._sender
        assert state is not None and tailer is not None and sender is not None
        watchdog_s = _watchdog_interval()
        next_ping = next_status = next_depth = 0.0
        next_prune = next_textfile = 0.0
        depth = state.spool_depth()
        # The next batch is read (and handed to the parse worker) while the one before is parsed
        # and committed. A failed commit keeps its batch at the head, to be tried again.
        ahead = self._ahead
        assert ahead is not None
        while not self._stop.is_set():
            now = time.monotonic()
            if self._reload.is_set():
                self._reload.clear()
                self._apply_reload()
            if watchdog_s and now >= next_ping:
                self._notify("WATCHDOG=1")
                next_ping = now + watchdog_s
            if now >= next_depth:
                depth = state.spool_depth()
                next_depth = now + _BACKPRESSURE_CHECK_S
                self._set_backpressure(depth >= self.settings.state.max_spool_records, depth)
            if now >= next_prune:
                # At least twice per retention period (a short one is a test's).
                every = min(_PRUNE_EVERY_S, max(1.0, self.settings.state.known_ids_days * 43_200))
                next_prune = now + (every if self._prune_known() else 0.0)
            if now >= next_status:
                self._notify(self._status_line(depth))
                self._report_health()
                self._quiet.flush()
                next_status = now + _HEALTH_EVERY_S
            if self._metrics is not None and now >= next_textfile:
                next_textfile = now + _TEXTFILE_EVERY_S
                try:
                    self._metrics.write_textfile()
                except (OSError, StateError) as exc:
                    self._quiet.log("textfile", logging.WARNING, "cannot write the metrics textfile",
                                    error=str(exc))
            if sender.error is not None:
                self._log.error("the sender stopped; exiting so the service manager restarts us")
                self._stop.set()
                break
            if self._health.backpressure:
                self._stop.wait(0.2)
                continue
            if not ahead:
                # Wake for the next report or watchdog ping too, so neither comes late.
                due = min(next_status, next_ping) if watchdog_s else next_status
                batch = tailer.read(timeout=min(_IDLE_WAIT_S, max(0.0, due - time.monotonic())))
                if batch is None:
                    continue
                self._add(ahead, batch)
            turn = time.monotonic()
            bulk = ahead.head.prepared.handed
            if len(ahead) == 1 and bulk and self._health.state_error is None:
                # Read the next batch while this one is parsed. A small batch (lines as they are
                # written) is parsed here instead, its records sent at once, and the lines that
                # come in the next moments join it (_gather) before it is committed.
                more = tailer.read(timeout=0)
                if more is not None:
                    self._add(ahead, more)
            if bulk:
                self._acknowledged(ahead, sender)
            elif (
                self._health.state_error is None
                and self._send_early(ahead.head_records(), sender)
                and len(ahead) == 1
            ):
                self._gather(ahead, sender)
            if not bulk:
                self._early_acked(ahead, sender)
            lines = len(ahead.head.prepared.lines)
            committing = time.monotonic()
            result = self._commit(ahead)
            self._slow_turn(turn, committing, lines)
            if result is not None:
                self._lines_read += lines
                depth += len(result.fresh)
                sender.offer(result.fresh, size=result.fresh_bytes)
                if depth >= self.settings.state.max_spool_records:
                    self._set_backpressure(True, depth)
            else:
                self._stop.wait(_STATE_RETRY_S)

    def _acknowledged(self, ahead: ReadAhead, sender: SenderThread) -> None:
        """The oldest batch, parsed beside: wait for Kafka's reports of its records if they were
        sent as it was parsed, reading the next batches meanwhile (:meth:`ReadAhead.await_reports`)."""
        tailer = self._tailer
        assert tailer is not None

        def read_more() -> bool:
            more = tailer.read(timeout=0)
            if more is not None:
                self._add(ahead, more)
            return more is not None

        ahead.await_reports(sender.sender, read_more,
                            lambda: self._stop.is_set() or self._health.state_error is not None)

    def _commit_held(self, ahead: ReadAhead, sender: SenderThread) -> None:
        """At a stop: commit the batches read and held, whose records may be in Kafka already
        (sent as they were parsed), so that they are not sent again at the next start. One the
        state refuses is left, to be read again."""
        while ahead and self._health.state_error is None:
            if ahead.head.prepared.handed:
                self._acknowledged(ahead, sender)
            result = self._commit(ahead)
            if result is None:
                return
            sender.offer(result.fresh, size=result.fresh_bytes)

    def _slow_turn(self, turn: float, committing: float, lines: int) -> None:
        """Say so when lines waited on the reader's own work: a turn (from lines read to their
        commit) that took over ``_SLOW_TURN_S`` — a slow disk under the state, most often."""
        now = time.monotonic()
        if now - turn > _SLOW_TURN_S:
            self._quiet.log("slow turn", logging.WARNING, "reading held up: lines waited this long",
                            seconds=round(now - turn, 3), commit_s=round(now - committing, 3),
                            lines=lines)

    def _send_early(self, parsed: RecordBatch, sender: SenderThread) -> bool:
        """Lines as they are written: their new records go to Kafka while their batch is committed
        and flushed to disk, not after (a trickle's latency); see :meth:`Sender.send_early`.
        Records whose ids are known already are left out, as the commit leaves them. True if
        every new record was sent (or there was none)."""
        if not parsed.rids:
            return True
        assert self._state is not None
        try:
            rids, jobids, payloads = self._state.new_among(parsed.rids, parsed.jobids, parsed.payloads)
        except StateError:
            return False  # the commit says what is wrong
        return sender.send_early(rids, jobids, payloads) == len(rids)

    @staticmethod
    def _early_acked(ahead: ReadAhead, sender: SenderThread) -> None:
        """A trickle's batch, about to be committed: its records sent early that Kafka acknowledged
        meanwhile (most of them, after :meth:`_gather`) are committed as delivered — never spooled,
        nothing to settle after the commit (:meth:`Sender.take_early_acked`)."""
        prepared = ahead.head.prepared
        if prepared.delivered is not None:
            return  # (a commit tried again: those it took then)
        rids = ahead.head_records().rids
        acked = sender.sender.take_early_acked(rids) if rids else ()
        if acked:
            prepared.delivered = [i for i, rid in enumerate(rids) if rid in acked]

    def _gather(self, ahead: ReadAhead, sender: SenderThread) -> None:
        """A trickle's batch whose new records were all sent early: lines that come within
        ``_GATHER_S`` join it, their records sent early as they come, so that one commit — one
        flush to disk — holds them all (a thousand lines a second cost a fiftieth of the flushes),
        and Kafka acknowledges most of them meanwhile: those are committed as delivered
        (:meth:`_early_acked`). Lines that cannot join (another file, a record not sent, the
        batch no longer small) are queued after it."""
        tailer = self._tailer
        assert tailer is not None
        deadline = time.monotonic() + _GATHER_S
        while not (self._stop.is_set() or self._reload.is_set()):
            timeout = deadline - time.monotonic()
            if timeout <= 0 or (batch := tailer.read(timeout=timeout)) is None:
                return
            position = self._position(batch)
            if batch.offsets and ahead.joins(position, batch.offsets[0], len(batch.lines)):
                parsed = ahead.ingestor.parse(batch.lines)
                if self._send_early(parsed, sender):
                    ahead.join(batch.lines, parsed, position=position, offsets=batch.offsets)
                    continue
            self._add(ahead, batch)
            return

    @staticmethod
    def _position(batch: LineBatch) -> Position:
        """Where ``batch`` leaves its file."""
        identity = batch.identity
        return Position(
            key=identity.key,
            path=batch.path,
            fingerprint=identity.fingerprint,
            offset=batch.end_offset,
            line_no=batch.end_line_no,
            inode=identity.inode,
            dev=identity.dev,
        )

    @classmethod
    def _add(cls, ahead: ReadAhead, batch: LineBatch) -> None:
        ahead.add(batch.lines, source=batch.path, position=cls._position(batch),
                  first_line_no=batch.first_line_no,
                  first_offset=batch.offsets[0] if batch.offsets else 0, offsets=batch.offsets)

    def _commit(self, ahead: ReadAhead) -> BatchResult | None:
        try:
            result = ahead.commit()
        except StateError as exc:
            if self._health.state_error != str(exc):
                self._log.error("cannot write the state; reading paused until it can", error=str(exc))
                self._health.state_error = str(exc)
                self._health.state_error_since = time.time()
                self._report_health()
            self._notify(f"STATUS=state error: {exc.reason}")
            if exc.transient:
                # Space a full disk gets back goes to the commit, not to a write-ahead log that
                # grows again: fold it into the database and truncate it before the next try.
                self._state.checkpoint()  # type: ignore[union-attr]
            return None
        if self._health.state_error is not None:
            self._log.info("state writable again; reading resumed")
            self._health.state_error = self._health.state_error_since = None
        self._health.last_read_at = time.time()
        for q in ahead.ingestor.last_quarantined:
            # One line per reason a minute; `jobcompd quarantine list` shows them all.
            self._quiet.log(q.reason, logging.WARNING, "line quarantined", path=q.source,
                            line=q.line_no, offset=q.offset, reason=q.reason)
        return result

    def _set_backpressure(self, on: bool, depth: int) -> None:
        if on and not self._health.backpressure:
            self._log.warning(
                "spool full: reading paused, the log file is the buffer",
                spooled=depth,
                limit=self.settings.state.max_spool_records,
            )
        elif not on and self._health.backpressure:
            self._log.info("spool below its limit: reading resumed", spooled=depth)
        self._health.backpressure = on

    # -- reload ------------------------------------------------------------------------------

    def _apply_reload(self) -> None:
        old = self.settings
        try:
            new = load_settings(old.config_path)
        except (ConfigError, OSError) as exc:
            problems = getattr(exc, "problems", None) or [exc]
            for problem in problems:
                self._log.error("reload refused, keeping the running configuration", problem=str(problem))
            return
        self._notify("RELOADING=1")
        if new.source != old.source:
            self._log.warning("source.* changed: takes effect at the next restart")
            new = replace(new, source=old.source)
        if (new.state.dir, new.state.synchronous) != (old.state.dir, old.state.synchronous):
            self._log.warning("state.dir/state.synchronous changed: take effect at the next restart")
            new = replace(new, state=replace(new.state, dir=old.state.dir, synchronous=old.state.synchronous))
        # All or nothing: the Kafka settings, which can fail, first; logging only once they apply.
        kafka: KafkaSettings = new.kafka
        assert self._sender is not None
        try:
            self._sender.call(lambda: self._sender.sender.reconfigure(kafka), timeout=120)  # type: ignore[union-attr]
        except Exception as exc:
            self._log.error("reload refused: applying the Kafka settings failed; keeping the running "
                            "configuration", error=str(exc))
            self._notify("READY=1")
            return
        logs.configure(new.log)
        self._log = structlog.get_logger("jobcompd.daemon")
        self.settings = new
        for warning in new.warnings:
            self._log.warning(warning)
        self._log.info(
            "configuration reloaded", topic=kafka.topic, params=str(kafka.params),
            partitioning=kafka.partitioning, log_level=new.log.level,
        )
        self._notify("READY=1")

    # -- positions for the tailer ------------------------------------------------------------

    def _lookup(self, fingerprint: str) -> Position | None:
        assert self._ahead is not None
        return self._ahead.position(position_key(LIVE, fingerprint))

    def _known(self) -> list[tuple[str, Position]]:
        assert self._state is not None
        return [(p.fingerprint, p) for p in self._state.positions() if p.reader == LIVE]


def _watchdog_interval() -> float:
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return 0.0
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return 0.0


def default_pidfile_check(path: Path) -> int | None:
    """The pid in ``path`` if that process is alive, else ``None`` (a stale or absent pid file)."""
    try:
        pid = int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid
