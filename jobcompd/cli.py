"""The ``jobcompd`` command line: subcommands and their wiring."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from jobcompd import __version__
from jobcompd._memory import tune_memory
from jobcompd.batch import ParseSpec, parse_batch
from jobcompd.config import ConfigError, Settings, load_settings, redacted
from jobcompd.ingest import read_batches
from jobcompd.lock import StateDirLock, StateDirUnusable
from jobcompd.logfile import STREAM_ERRORS, open_log
from jobcompd.record import DEFAULT_MAX_LINE_BYTES
from jobcompd.state import State, StateError
from jobcompd.zone import TimeZoneError
from jobcompd.zone import resolve as resolve_zone

EXIT_OK = 0
EXIT_SOME_BAD = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _cmd_parse(args: argparse.Namespace) -> int:
    try:
        spec = ParseSpec(resolve_zone(args.tz).spec, args.cluster, args.max_line_bytes)
    except TimeZoneError as exc:
        print(f"jobcompd parse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout.buffer
    status = EXIT_OK
    for name in args.files or ["-"]:
        label = "<stdin>" if name == "-" else name
        try:
            fh = open_log(name)
        except OSError as exc:
            print(f"jobcompd parse: {label}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            line_no = 1
            for lines in read_batches(fh, 1024, max_bytes=args.max_line_bytes):
                batch = parse_batch(lines, spec)
                events: list[tuple[int, bytes | str]] = list(zip(batch.at, batch.payloads, strict=True))
                events += batch.bad
                for index, value in sorted(events):
                    if isinstance(value, str):
                        out.flush()
                        print(f"{label}:{line_no + index}: {value}", file=sys.stderr)
                        status = EXIT_SOME_BAD
                    else:
                        out.write(value + b"\n")
                line_no += len(lines)
            out.flush()
        except STREAM_ERRORS as exc:
            print(f"jobcompd parse: {label}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
    return status


def _settings(args: argparse.Namespace) -> Settings | None:
    """Load the configuration, or print every problem (file, key or line, reason) and give up."""
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"jobcompd: {problem}", file=sys.stderr)
        return None
    except OSError as exc:
        print(f"jobcompd: {exc}", file=sys.stderr)
        return None
    return settings


def _open_state(settings: Settings, *, readonly: bool = False) -> State | None:
    try:
        return State.open(settings.state.dir, synchronous=settings.state.synchronous, readonly=readonly)
    except StateError as exc:
        print(f"jobcompd: {exc}", file=sys.stderr)
        return None


def _cmd_check_config(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    for warning in settings.warnings:
        print(f"jobcompd: warning: {warning}", file=sys.stderr)
    zone_warning = _zone_mismatch(settings)
    if zone_warning:
        print(f"jobcompd: warning: {zone_warning}", file=sys.stderr)
    view = redacted(settings)
    if args.json:
        print(json.dumps(view, indent=2, default=str))
    else:
        _print_tree(view)
    access = _check_access(settings, args.user, quiet=args.json)
    if access is None:
        return EXIT_USAGE
    if args.connect:
        from jobcompd.preflight import check_connection

        problems = check_connection(settings, timeout=args.timeout)
        for line in problems.report:
            print(line)
        if not problems.ok:
            return EXIT_SOME_BAD
    return EXIT_SOME_BAD if access else EXIT_OK


def _zone_mismatch(settings: Settings) -> str | None:
    """A warning when ``source.timezone`` is not the zone this system (and so slurmctld) runs in."""
    from jobcompd.zone import system_zone

    system = system_zone()
    if isinstance(system, str) or system == settings.source.zone:
        return None
    probe = [datetime(2024, 1, 15, 12), datetime(2024, 7, 15, 12)]
    if all(system.tz.utcoffset(t) == settings.source.zone.tz.utcoffset(t) for t in probe):
        return None  # another name for the same offsets (Etc/UTC and UTC)
    return (
        f"source.timezone: {settings.source.timezone!r} differs from this system's zone "
        f"{system.name!r}: slurmctld writes its times in its own zone, so unless it runs with "
        "TZ set to the first, every time will be shifted (comment source.timezone out to use "
        "the system's)"
    )


def _check_access(settings: Settings, user: str | None, *, quiet: bool) -> bool | None:
    """Print what the service user cannot use; True if anything stops it, None on a usage error."""
    from jobcompd.access import User, check_paths, check_paths_as

    if user is not None and os.geteuid() != 0:
        print("jobcompd check-config: --user needs root (it checks as that user)", file=sys.stderr)
        return None
    try:
        who = User.named(user) if user is not None else User.current()
    except KeyError:
        print(f"jobcompd check-config: no such user: {user}", file=sys.stderr)
        return None
    try:
        findings = check_paths_as(settings, who) if user is not None else check_paths(settings, who)
    except (OSError, RuntimeError) as exc:
        print(f"jobcompd check-config: {exc}", file=sys.stderr)
        return None
    for finding in findings:
        print(f"jobcompd: {finding.render(who)}", file=sys.stderr)
    if not any(f.level == "error" for f in findings):
        if not quiet:
            print(f"ok   files: the log, the rdkafka properties and the state dir are usable by {who.name}")
        return False
    return True


def _print_tree(view: dict[str, Any], prefix: str = "") -> None:
    for key, value in view.items():
        if isinstance(value, dict):
            _print_tree(value, f"{prefix}{key}.")
        else:
            print(f"{prefix}{key} = {json.dumps(value, default=str)}")


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _cmd_replay(args: argparse.Namespace) -> int:
    from jobcompd import logs
    from jobcompd.ingest import Ingestor
    from jobcompd.producer import Sender
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
        sender = Sender(state, settings.kafka, debug_jobcomp=settings.log.debug_jobcomp)
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


def _listing(
    args: argparse.Namespace,
    settings: Settings,
    fetch: Callable[[State], Sequence[Any]],
    as_json: Callable[[Any], dict[str, Any]],
    as_text: Callable[[Any], str],
    noun: str,
) -> int:
    """``deadletter list`` and ``quarantine list``: rows read-only, as JSON or text."""
    state = _open_state(settings, readonly=True)
    if state is None:
        return EXIT_USAGE
    with state:
        rows = fetch(state)
    if args.json:
        print(json.dumps([as_json(row) for row in rows]))
    else:
        for row in rows:
            print(as_text(row))
        print(f"{len(rows)} {noun}", file=sys.stderr)
    return EXIT_OK


def _chosen(args: argparse.Namespace, settings: Settings, given: Sequence[Any], what: str
            ) -> tuple[State, list[Any] | None] | None:
    """The state opened for writing and the ids an action names (None: ``--all``), or None
    after saying why not."""
    if not args.all and not given:
        print(f"jobcompd {args.command} {args.action}: name {what}, or --all", file=sys.stderr)
        return None
    state = _open_state(settings)
    return None if state is None else (state, None if args.all else list(given))


def _cmd_deadletter(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    if args.action == "list":
        return _listing(
            args,
            settings,
            lambda state: state.dead_letters(limit=args.limit),
            lambda d: {
                "rid": d.rid,
                "jobid": d.jobid,
                "reason": d.reason,
                "failed_at": d.failed_at,
                "attempts": d.attempts,
                "source": d.source,
                "payload": d.payload.decode(errors="replace"),
            },
            lambda d: f"{d.rid}  job {d.jobid}  "
            f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(d.failed_at))}  "
            f"attempts={d.attempts}  {d.reason}",
            "dead letter(s)",
        )
    chosen = _chosen(args, settings, args.rids, "record ids")
    if chosen is None:
        return EXIT_USAGE
    state, rids = chosen
    with state:
        if args.action == "retry":
            n = state.retry_dead_letters(rids)
            print(f"{n} dead letter(s) moved back to the spool; a running jobcompd sends them")
        else:
            n = state.purge_dead_letters(rids)
            print(f"{n} dead letter(s) purged (counted in the state's purged total)")
    return EXIT_OK


def _shown(raw: bytes, limit: int = 240) -> str:
    """A quarantined line as text that cannot disturb a terminal: control bytes and invalid UTF-8
    escaped, cut at ``limit`` characters."""
    text = raw.rstrip(b"\r\n").decode(errors="backslashreplace")
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text[: limit + 1])
    return text if len(text) <= limit else f"{text[:limit]}… ({len(raw)} bytes)"


def _cmd_quarantine(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings is None:
        return EXIT_USAGE
    if args.action == "list":
        return _listing(
            args,
            settings,
            lambda state: state.quarantined(limit=args.limit),
            lambda q: {"id": q.id, "source": q.source, "line_no": q.line_no, "offset": q.offset,
                       "reason": q.reason, "at": q.at,
                       "raw": q.raw.decode(errors="backslashreplace")},
            lambda q: f"{q.id}  {q.source}:{q.line_no} (byte {q.offset})  {q.reason}\n"
            f"    {_shown(q.raw)}",
            "quarantined line(s)",
        )
    chosen = _chosen(args, settings, args.ids, "line ids")
    if chosen is None:
        return EXIT_USAGE
    state, ids = chosen
    with state:
        if args.action == "purge":
            n = state.purge_quarantined(ids)
            print(f"{n} quarantined line(s) purged (counted in the state)")
            return EXIT_OK
        from jobcompd.ingest import Ingestor

        lines = state.quarantined_by_id(ids)
        ingestor = Ingestor.configured(state, settings.source, settings.cluster)
        try:
            result, released = ingestor.retry_quarantined(lines)
        finally:
            ingestor.close()
    print(f"{released} of {len(lines)} line(s) read as records now: {result.spooled} spooled "
          f"(a running jobcompd sends them), {result.already_known} already known")
    return EXIT_OK if released == len(lines) else EXIT_SOME_BAD


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


def _held_records_parser(
    sub: Any,
    name: str,
    func: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    noun: str,
    retry: str,
    ids: tuple[str, str, type],
) -> None:
    """``NAME list|retry|purge``: the commands for what the state holds aside (dead letters,
    quarantined lines)."""
    p = sub.add_parser(name, help=help, description=description)
    actions = p.add_subparsers(dest="action", metavar="ACTION", parser_class=_Parser)
    actions.required = True
    q = actions.add_parser("list", help=f"show {noun}s and why")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--json", action="store_true")
    dest, metavar, kind = ids
    for action, text in (("retry", retry), ("purge", f"drop {noun}s on purpose (counted)")):
        q = actions.add_parser(action, help=text)
        q.add_argument(dest, nargs="*", metavar=metavar, type=kind)
        q.add_argument("--all", action="store_true", help=f"every {noun}")
    for q in actions.choices.values():
        _config_arg(q)
    p.set_defaults(func=func)


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default=None,
        metavar="FILE",
        help="configuration file (default: $JOBCOMPD_CONFIG or /etc/jobcompd/jobcompd.toml)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jobcompd`` and all its subcommands."""
    parser = _Parser(
        prog="jobcompd",
        description="Ship Slurm jobcomp/filetxt records to Kafka as the jobcomp/kafka plugin's JSON.",
    )
    parser.add_argument("--version", action="version", version=f"jobcompd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    p = sub.add_parser(
        "parse",
        help="turn jobcomp/filetxt lines into the plugin's JSON (offline, no Kafka)",
        description=(
            "Write one JSON object per record of the input files to stdout, in input order. "
            "Each line that is not a record goes to stderr as FILE:LINE: reason. "
            "Exit 0 when every line parsed, 1 when some were quarantined, 2 on usage or I/O errors."
        ),
    )
    p.add_argument(
        "files", nargs="*", metavar="FILE", help="log files (may be gzip, bzip2 or xz); - or none: stdin"
    )
    p.add_argument(
        "--tz",
        default=None,
        metavar="ZONE",
        help="IANA time zone of the times in the log (default: the system's local zone)",
    )
    p.add_argument(
        "--cluster",
        default=None,
        help="cluster name for lines that carry none (only affects record ids)",
    )
    p.add_argument(
        "--max-line-bytes",
        type=int,
        default=DEFAULT_MAX_LINE_BYTES,
        help=f"longest accepted line (default {DEFAULT_MAX_LINE_BYTES})",
    )
    p.set_defaults(func=_cmd_parse)

    p = sub.add_parser(
        "run",
        help="run the daemon: tail the log and ship every finished job to Kafka",
        description="Run in the foreground (right under systemd: Type=notify, SIGHUP reloads, "
        "SIGTERM stops after flushing up to flush_timeout). With --daemon, detach "
        "(for init systems without systemd).",
    )
    _config_arg(p)
    p.add_argument("--daemon", action="store_true", help="detach from the terminal")
    p.add_argument("--pidfile", metavar="PATH", help="pid file (locked; a stale one is replaced)")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser(
        "status",
        help="read-only view of the state; exit 0/1/2 = ok/warning/critical (monitoring check)",
        description="Spool depth, oldest undelivered age, dead letters, quarantined lines, read "
        "position against the file (lag), last delivery, whether a daemon runs. "
        "Exit 0 ok, 1 warning, 2 critical, 3 unknown (thresholds in [status]).",
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser(
        "check-config",
        help="validate the configuration and print the effective settings",
        description="Print the effective settings (secrets redacted) and check, as the current "
        "user or as --user, that the log (or its directory), the rdkafka properties file and "
        "the state directory can be used; each problem names the path and the fix. Exit 2 on "
        "configuration or usage errors; 1 when a file cannot be used or, with --connect, the "
        "brokers or the topic do not answer.",
    )
    _config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument(
        "--user",
        metavar="NAME",
        help="check the files as this user, e.g. the service's (root only)",
    )
    p.add_argument(
        "--connect",
        action="store_true",
        help="also check that the brokers answer and the topic is usable",
    )
    p.add_argument("--timeout", type=float, default=10.0, help="seconds for --connect")
    p.set_defaults(func=_cmd_check_config)

    p = sub.add_parser(
        "replay",
        help="backfill log files (plain, .gz, or - for stdin) to Kafka through the state",
        description="One-shot backfill through the same durable path as the daemon. Records "
        "already delivered are not sent again. Exit 0 only when every record read was "
        "delivered; 1 when lines were quarantined, records dead-lettered or left in "
        "the spool; 2 on usage, configuration or state errors.",
    )
    _config_arg(p)
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_replay)

    _held_records_parser(
        sub,
        "deadletter",
        _cmd_deadletter,
        help="list, retry or purge records Kafka refused",
        description="Dead letters are records a delivery report refused (too large, not "
        "authorized, timed out without requeue_on_msg_timeout, ...).",
        noun="dead letter",
        retry="move dead letters back to the spool to send again",
        ids=("rids", "RECORD_ID", str),
    )
    _held_records_parser(
        sub,
        "quarantine",
        _cmd_quarantine,
        help="list, retry or purge lines that were not records",
        description="Quarantined lines could not be read as records (malformed, cut short, "
        "out of range, ...). retry reads them again with this version's parser: those that are "
        "records now are spooled (records already known are not sent twice).",
        noun="quarantined line",
        retry="read quarantined lines again; exit 1 if some are still not records",
        ids=("ids", "ID", int),
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``jobcompd`` console script."""
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except BrokenPipeError:
        # A closed stdout (``jobcompd parse … | head``) is not an error of ours.
        sys.stderr.close()
        return EXIT_OK
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
