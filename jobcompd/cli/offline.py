"""`jobcompd parse`: lines in, the plugin's JSON out, no Kafka and no state."""

from __future__ import annotations

import argparse
import sys

from jobcompd.batch import ParseSpec, parse_batch
from jobcompd.cli._common import (
    EXIT_OK,
    EXIT_SOME_BAD,
    EXIT_USAGE,
)
from jobcompd.ingest import read_batches
from jobcompd.logfile import STREAM_ERRORS, open_log
from jobcompd.zone import TimeZoneError
from jobcompd.zone import resolve as resolve_zone


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
