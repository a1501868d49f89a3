"""The ``jobcompd`` command line: subcommands and their wiring."""

from __future__ import annotations

import argparse
import gzip
import sys
from collections.abc import Iterator, Sequence
from typing import BinaryIO

from jobcompd import __version__
from jobcompd.encode import Encoder, TimeZoneError, resolve_zone
from jobcompd.record import DEFAULT_MAX_LINE_BYTES, ParseError, parse_line

EXIT_OK = 0
EXIT_SOME_BAD = 1
EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def open_input(name: str) -> BinaryIO:
    """A file (``.gz`` recognised by its magic bytes) or ``-`` for stdin, opened for bytes."""
    if name == "-":
        return sys.stdin.buffer
    fh: BinaryIO = open(name, "rb")  # noqa: SIM115 - returned to the caller
    if fh.peek(2)[:2] == b"\x1f\x8b":  # type: ignore[attr-defined]
        return gzip.GzipFile(fileobj=fh, mode="rb")  # type: ignore[return-value]
    return fh


def read_lines(fh: BinaryIO) -> Iterator[bytes]:
    """Every line of ``fh`` with its newline; a last line without one is yielded too."""
    yield from fh


def _cmd_parse(args: argparse.Namespace) -> int:
    try:
        encoder = Encoder(resolve_zone(args.tz), args.cluster)
    except TimeZoneError as exc:
        print(f"jobcompd parse: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = sys.stdout.buffer
    status = EXIT_OK
    for name in args.files or ["-"]:
        label = "<stdin>" if name == "-" else name
        try:
            fh = open_input(name)
        except OSError as exc:
            print(f"jobcompd parse: {label}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_USAGE
        try:
            pending: list[bytes] = []
            for line_no, line in enumerate(read_lines(fh), 1):
                record = parse_line(line, max_bytes=args.max_line_bytes)
                if isinstance(record, ParseError):
                    if pending:
                        out.write(b"".join(pending))
                        pending.clear()
                        out.flush()
                    print(f"{label}:{line_no}: {record.reason}", file=sys.stderr)
                    status = EXIT_SOME_BAD
                    continue
                pending.append(encoder.encode(record) + b"\n")
                if len(pending) >= 1024:
                    out.write(b"".join(pending))
                    pending.clear()
            out.write(b"".join(pending))
            out.flush()
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            print(f"jobcompd parse: {label}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
    return status


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
    p.add_argument("files", nargs="*", metavar="FILE", help="log files (.gz allowed); - or none: stdin")
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
