"""The ``jobcompd`` command line: subcommands and their wiring."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from jobcompd import __version__, fastpath, sendloop
from jobcompd.cli._common import EXIT_OK, EXIT_SOME_BAD, EXIT_USAGE, _config_arg, _Parser
from jobcompd.cli.checks import _cmd_check_config
from jobcompd.cli.held import _cmd_deadletter, _cmd_quarantine, _held_records_parser
from jobcompd.cli.offline import _cmd_parse
from jobcompd.cli.service import _cmd_replay, _cmd_run, _cmd_status
from jobcompd.record import DEFAULT_MAX_LINE_BYTES

__all__ = ["EXIT_OK", "EXIT_SOME_BAD", "EXIT_USAGE", "build_parser", "main"]


class _Version(argparse.Action):
    """``--version``: the line as it is (argparse's own action wraps it at the terminal's width)."""

    def __init__(self, option_strings: list[str], version: str, dest: str = argparse.SUPPRESS) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS,
                         help="show program's version number and exit")
        self.version = version

    def __call__(self, parser: argparse.ArgumentParser, *args: Any) -> None:
        print(self.version)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``jobcompd`` and all its subcommands."""
    parser = _Parser(
        prog="jobcompd",
        description="Ship Slurm jobcomp/filetxt records to Kafka as the jobcomp/kafka plugin's JSON.",
    )
    parser.add_argument(
        "--version",
        action=_Version,
        version=f"jobcompd {__version__} (record reader: {fastpath.PARSER}; send loop: {sendloop.SEND_LOOP})",
    )
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
