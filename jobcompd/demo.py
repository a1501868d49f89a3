"""``make demo``: show what jobcompd does with a shipped sample of a jobcomp/filetxt log.

It runs ``jobcompd parse`` on ``jobcompd/data/sample_jobcomp.log`` (lines of every Slurm
generation, hostile names, a non-UTF-8 name, a DST fold, one line that is not a record) and prints
each input line next to the JSON the jobcomp/kafka plugin would have sent for it.
"""

from __future__ import annotations

import sys
from importlib import resources

from jobcompd.encode import Encoder, resolve_zone
from jobcompd.record import ParseError, parse_line

ZONE = "Europe/Berlin"


def main() -> int:
    sample = resources.files("jobcompd") / "data" / "sample_jobcomp.log"
    data = sample.read_bytes()
    encoder = Encoder(resolve_zone(ZONE), cluster="demo")
    print(f"# jobcompd demo: {sample} (times in {ZONE})\n")
    bad = 0
    for line_no, line in enumerate(data.splitlines(keepends=True), 1):
        shown = line.decode(errors="replace").rstrip("\n")
        print(f"line {line_no}: {shown[:110]}{'…' if len(shown) > 110 else ''}")
        record = parse_line(line)
        if isinstance(record, ParseError):
            bad += 1
            print(f"  quarantined: {record.reason}\n")
            continue
        print(f"  id   {encoder.record_id(line, record)}")
        print(f"  json {encoder.encode(record).decode()}\n")
    print(f"# {line_no - bad} records encoded, {bad} line(s) quarantined")
    print(f"# the same with the CLI: jobcompd parse --tz {ZONE} {sample}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
