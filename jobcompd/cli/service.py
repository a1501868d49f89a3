"""`jobcompd run`, `replay` and `status`: the daemon, the backfill and the monitoring check."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

from jobcompd._memory import tune_memory
from jobcompd.cli._common import (
    EXIT_OK,
    EXIT_SOME_BAD,
    EXIT_USAGE,
    _open_state,
    _settings,
    _stop_on_signals,
)
from jobcompd.config import Settings
from jobcompd.lock import StateDirLock, StateDirUnusable
from jobcompd.logfile import STREAM_ERRORS
from jobcompd.state import StateError


def _cmd_replay(args: argparse.Namespace) -> int:
    from jobcompd import logs
    from jobcompd.ingest import Ingestor
    from jobcompd.producer import REPLAY_EARLY_WINDOW, REPLAY_EARLY_WINDOW_BYTES, REPLAY_WINDOW, Sender
    from jobcompd.replay import Replayer

    tune_memory()
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    missing = [f for f in args.files if f != "-" and not os.path.isfile(f)]
    if missing:
        for name in missing:
            print(f"jobcompd replay: {name}: no such file", file=sys.stderr)
        return EXIT_USAGE
    logs.configure(settings.log)
    import structlog

    log = structlog.get_logger("jobcompd.replay")
    for warning in settings.warnings:
        log.warning(warning)
    try:
        lock = StateDirLock(settings.state.dir).acquire()
    except StateDirUnusable as exc:
        print(f"jobcompd replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    state = _open_state(settings)
    if state is None:
        lock.release()
        return EXIT_USAGE
    stop = _stop_on_signals()
    ingestor = Ingestor.configured(state, settings.source, settings.cluster)
    try:
        sender = Sender(
            state, settings.kafka, debug_jobcomp=settings.log.debug_jobcomp, window=REPLAY_WINDOW,
            early_window=REPLAY_EARLY_WINDOW, early_window_bytes=REPLAY_EARLY_WINDOW_BYTES,
        )
        replayer = Replayer(
            state,
            ingestor,
            sender,
            max_spool_records=settings.state.max_spool_records,
            progress=sys.stderr if sys.stderr.isatty() and not args.quiet else None,
            stop=stop,
        )
        started = time.monotonic()
        summary = replayer.run(list(args.files))
    except StateError as exc:
        print(f"jobcompd replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except STREAM_ERRORS as exc:  # a damaged compressed file: what was read before it is kept
        print(f"jobcompd replay: cannot read on: {exc}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        ingestor.close()
        state.close()
        lock.release()
    elapsed = time.monotonic() - started
    lines = summary.lines_text()
    lines.append(f"elapsed:        {elapsed:.1f} s")
    lines.append("result:         " + ("complete" if summary.complete else "INCOMPLETE"))
    if args.json:
        doc = {k: getattr(summary, k) for k in summary.__slots__}  # type: ignore[attr-defined]
        doc.update(complete=summary.complete, elapsed_s=round(elapsed, 3))
        print(json.dumps(doc))
    else:
        print("\n".join(lines))
    return EXIT_OK if summary.complete else EXIT_SOME_BAD


def _cmd_run(args: argparse.Namespace) -> int:
    from jobcompd import logs

    tune_memory()
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    if args.daemon:
        if not args.pidfile:
            print("jobcompd run: --daemon needs --pidfile PATH", file=sys.stderr)
            return EXIT_USAGE
        context = _daemon_context(args.pidfile)
        if context is None or not _can_start(settings):
            return EXIT_USAGE
        with context:
            return _run_daemon(settings)
    logs.configure(settings.log)
    return _run_daemon(settings)


def _can_start(settings: Settings) -> bool:
    """What can stop the daemon from starting, checked while it can still say so on stderr
    (before it detaches): the state directory, its lock, the state itself and the log."""
    from jobcompd.logfile import log_problem

    try:
        lock = StateDirLock(settings.state.dir).acquire()
    except StateDirUnusable as exc:
        print(f"jobcompd run: {exc}", file=sys.stderr)
        return False
    try:
        state = _open_state(settings)
        if state is None:
            return False
        state.close()
    finally:
        lock.release()
    problem = log_problem(settings.source.path)
    if problem is not None:
        print(f"jobcompd run: source.path {settings.source.path}: {problem}", file=sys.stderr)
        return False
    return True


def _daemon_context(pidfile: str) -> Any:
    """python-daemon's context: detach, close std streams, chdir /, a locked pid file."""
    from pathlib import Path

    import daemon
    import daemon.pidfile

    from jobcompd.daemon import default_pidfile_check

    path = Path(pidfile).absolute()
    alive = default_pidfile_check(path)
    if alive is not None:
        print(f"jobcompd run: already running as pid {alive} ({path})", file=sys.stderr)
        return None
    if path.exists():
        path.unlink()  # stale: its process is gone
    return daemon.DaemonContext(
        working_directory="/",
        umask=0o077,
        pidfile=daemon.pidfile.TimeoutPIDLockFile(str(path), acquire_timeout=0),
        detach_process=True,
    )


def _run_daemon(settings: Settings) -> int:
    import sdnotify
    import structlog

    from jobcompd import logs
    from jobcompd.daemon import Daemon
    from jobcompd.lock import StateDirUnusable

    logs.configure(settings.log)
    log = structlog.get_logger("jobcompd")
    daemon_ = Daemon(settings, notifier=sdnotify.SystemdNotifier())
    daemon_.install_signal_handlers()
    try:
        return daemon_.run()
    except StateDirUnusable as exc:
        log.error("cannot start", error=str(exc))
        return EXIT_USAGE
    except StateError as exc:
        log.error("cannot start: the state cannot be opened", error=str(exc))
        return EXIT_USAGE


def _cmd_status(args: argparse.Namespace) -> int:
    from jobcompd.status import UNKNOWN, collect, from_report, render, unknown

    settings = _settings(args)
    if settings is None:
        print("jobcompd UNKNOWN: the configuration cannot be used (see the lines above)")
        return UNKNOWN
    try:
        report = collect(settings)
    except OSError as exc:  # a state this user may not read: the daemon's report, or one line
        shared = from_report(settings)
        if shared is None:
            print(unknown(settings, exc))
            return UNKNOWN
        report = shared
    if args.json:
        print(json.dumps(report.as_dict(), indent=2, default=str))
    else:
        print(render(report))
    return report.exit_code
