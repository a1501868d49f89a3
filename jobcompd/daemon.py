"""``jobcompd run``: the long-running daemon — tail the log, spool durably, send, reload, notify.

Threads:

* the **main thread** reads: it asks the tailer for the next batch of complete lines and commits
  it (records, quarantined lines and the read position in one transaction), reading one batch
  ahead so that the parse worker parses batch n+1 while batch n is committed; it also serves
  signals (SIGTERM/SIGINT stop, SIGHUP reload), systemd notifications and the watchdog;
* the **sender thread** runs the producer worker: it produces from the spool and settles
  delivery reports, and is woken as soon as a batch is committed.

Above ``state.max_spool_records`` undelivered records the reader pauses (the log file is the
buffer) and says so in the log and the status.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from jobcompd import logs
from jobcompd.config import ConfigError, KafkaSettings, Settings, load_settings
from jobcompd.health import Health, write_health
from jobcompd.identity import LIVE, Position, position_key
from jobcompd.ingest import Ingestor, ReadAhead
from jobcompd.lock import StateDirLock
from jobcompd.metrics import Facts, Metrics
from jobcompd.producer import Sender
from jobcompd.record import unfinished_tail
from jobcompd.state import BatchResult, SpooledRecord, State, StateError, Stats
from jobcompd.tailer import LineBatch, Tailer

__all__ = ["Daemon"]

_STATE_RETRY_S = 1.0  # after a failed commit (disk full, read-only), wait before trying again
_BACKPRESSURE_CHECK_S = 0.5
_HEALTH_EVERY_S = 2.0  # STATUS= and health.json
_TEXTFILE_EVERY_S = 15.0  # node_exporter's textfile: rewritten this often
_PRUNE_EVERY_S = 600.0  # forget known ids past state.known_ids_days, in steps:
_PRUNE_STEP = 5_000  # ids a transaction, at most
_PRUNE_STEPS = 20  # transactions a turn of the main loop, at most


class SenderThread(threading.Thread):
    """Runs :class:`Sender` on its own thread; other threads talk to it through :meth:`call`."""

    def __init__(self, sender: Sender, log: Any) -> None:
        super().__init__(name="jobcompd-sender", daemon=True)
        self.sender = sender
        self._log = log
        self._wake = threading.Event()
        self._halt = threading.Event()  # not _stop: that would shadow Thread._stop()
        self._calls: queue.Queue[tuple[Callable[[], Any], queue.Queue[Any]]] = queue.Queue()
        self.error: BaseException | None = None
        self.left_in_spool = 0

    def offer(self, records: Sequence[SpooledRecord]) -> None:
        """New records are in the spool, and here they are (see :meth:`Sender.offer`)."""
        self.sender.offer(records)
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
        sender = self.sender
        poll_interval = max(0.05, float(sender.kafka.params.poll_interval))
        try:
            sender.start()
            while not self._halt.is_set():
                self._serve_calls()
                if self._wake.is_set():
                    self._wake.clear()
                    sender.wake()
                if sender.idle():
                    # Nothing in flight: sleep until a batch is committed (or a poll_interval
                    # passes, to pick up records that reach the spool another way).
                    self._wake.wait(poll_interval)
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


class Daemon:
    """Wires settings, state, tailer, ingestor and sender together and runs until stopped."""

    def __init__(self, settings: Settings, *, notifier: Any = None) -> None:
        self.settings = settings
        self._log = structlog.get_logger("jobcompd.daemon")
        self._quiet = logs.Quieter(self._log)
        self._lines_read = 0
        self._metrics: Metrics | None = None
        self._notifier = notifier
        self._stop = threading.Event()
        self._reload = threading.Event()
        self._health = Health(pid=os.getpid(), started_at=time.time())
        self._state: State | None = None
        self._tailer: Tailer | None = None
        self._sender: SenderThread | None = None
        self._ahead: ReadAhead | None = None  # batches read, not yet committed

    # -- signals -----------------------------------------------------------------------------

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.stop())
        signal.signal(signal.SIGINT, lambda *_: self.stop())
        signal.signal(signal.SIGHUP, lambda *_: self._reload.set())

    def stop(self) -> None:
        """Ask the daemon to stop gracefully (thread- and signal-safe)."""
        self._stop.set()

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
        self._tailer = Tailer(
            settings.source.path,
            lookup=self._lookup,
            known=self._known,
            start_at=settings.source.start_at,
            poll=settings.source.poll,
            max_line_bytes=settings.source.max_line_bytes,
            hold=functools.partial(unfinished_tail, max_bytes=settings.source.max_line_bytes),
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
                batch = tailer.read(timeout=0.2)
                if batch is None:
                    continue
                self._add(ahead, batch)
            if len(ahead) == 1 and self._health.state_error is None:
                more = tailer.read(timeout=0)
                if more is not None:
                    self._add(ahead, more)
            lines = len(ahead.head.pending.lines)
            result = self._commit(ahead)
            if result is not None:
                self._lines_read += lines
                depth += lines
                sender.offer(result.fresh)
                if depth >= self.settings.state.max_spool_records:
                    self._set_backpressure(True, depth)
            else:
                self._stop.wait(_STATE_RETRY_S)

    @staticmethod
    def _add(ahead: ReadAhead, batch: LineBatch) -> None:
        identity = batch.identity
        position = Position(
            key=identity.key,
            path=batch.path,
            fingerprint=identity.fingerprint,
            offset=batch.end_offset,
            line_no=batch.end_line_no,
            inode=identity.inode,
            dev=identity.dev,
        )
        ahead.add(batch.lines, source=batch.path, position=position, first_line_no=batch.first_line_no,
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
            "configuration reloaded", topic=kafka.topic, params=str(kafka.params), log_level=new.log.level
        )
        self._notify("READY=1")

    # -- positions for the tailer ------------------------------------------------------------

    def _lookup(self, fingerprint: str) -> Position | None:
        assert self._ahead is not None
        return self._ahead.position(position_key(LIVE, fingerprint))

    def _known(self) -> list[tuple[str, Position]]:
        assert self._state is not None
        return [(p.fingerprint, p) for p in self._state.positions() if p.reader == LIVE]

    # -- systemd -----------------------------------------------------------------------------

    def _start_metrics(self) -> None:
        m = self.settings.metrics
        if m.port is None and m.textfile is None:
            return
        self._metrics = Metrics(self._facts, host=m.host, port=m.port, textfile=m.textfile)
        if m.port is not None:
            self._log.info("serving metrics", listen=f"{m.host}:{m.port}")

    def _facts(self) -> Facts:
        """What the metrics show, read when they are scraped (from the server's thread)."""
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
                h.spool_depth = stats.spool_depth
                h.oldest_pending_at = stats.oldest_pending_at
                h.dead_letters = stats.deadletter_count
                h.quarantined = stats.quarantine_count
                h.delivered_total = stats.delivered_total
                h.last_delivered_jobid = stats.last_delivered_jobid
                h.state_bytes = stats.db_bytes
                h.known_ids = stats.known_ids
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
