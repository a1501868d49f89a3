"""Parse + encode throughput on one core: ``make bench-parse``.

Prints lines/s for jobcompd's :func:`jobcompd.batch.parse_batch` (parse + encode + record id, the
loop the parse worker runs) over >= 200k generated lines of mixed
Slurm generations, next to a baseline measured in the same run on the same lines: the naive
split-on-spaces reader (what Slurm's own filetxt reader does, wrong on hostile names) feeding
orjson. The machine is shared and noisy, so compare the ratio, not the absolute figure.

Then hostile lines: each shape built to make a backtracking parser slow (tests/slurmctld.py) at
16, 32 and 64 KiB, timed against the ordinary line, per byte. Linear parsing keeps the per-byte
ratio flat as the line grows; a quadratic one doubles it with each doubling.
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jobcompd import fastpath
from jobcompd.batch import ParseSpec, _parse_batch, parse_batch
from jobcompd.fastpath import compiled_encoder
from jobcompd.logfile import BATCH_LINES
from jobcompd.record import DEFAULT_MAX_LINE_BYTES, parse_line
from jobcompd.zone import resolve as resolve_zone
from tests.slurmctld import hostile_lines, mixed_lines, ordinary_line


def naive(lines: list[bytes]) -> int:
    n = 0
    for line in lines:
        fields = dict(tok.split(b"=", 1) for tok in line.split() if b"=" in tok)
        n += len(orjson.dumps({k.decode(): v.decode(errors="replace") for k, v in fields.items()}))
    return n


def jobcompd(lines: list[bytes], spec: ParseSpec, python_only: bool = False) -> int:
    """What production runs for each batch (in the parse worker, or in-process); with
    ``python_only``, what it runs where the compiled reader is not built."""
    n = 0
    for start in range(0, len(lines), BATCH):
        chunk = lines[start : start + BATCH]
        batch = _parse_batch(chunk, spec, None) if python_only else parse_batch(chunk, spec)
        if batch.bad:
            raise SystemExit(f"benchmark line did not parse: {batch.bad[0]}")
        n += sum(map(len, batch.payloads))
    return n


def best_of(runs: int, fn, *args) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(runs):
        gc.collect()
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


BATCH = BATCH_LINES  # lines a batch, as the daemon and replay read them


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lines", type=int, default=200_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--tz", default="Europe/Berlin")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core
    zone = ZoneInfo(args.tz)
    print(f"generating {args.lines} mixed-generation lines ...", flush=True)
    lines = mixed_lines(args.lines, seed=42, zone=zone)
    mb = sum(map(len, lines)) / 1e6
    spec = ParseSpec(resolve_zone(args.tz).spec, "bench", DEFAULT_MAX_LINE_BYTES)
    t_base = best_of(args.runs, naive, lines)
    t_all = best_of(args.runs, jobcompd, lines, spec)
    t_python = best_of(args.runs, jobcompd, lines, spec, True)
    n = len(lines)
    compiled = compiled_encoder(*spec)
    answered = 0 if compiled is None else sum(
        len(compiled.encode_lines(lines[i : i + BATCH])[3]) for i in range(0, n, BATCH)
    )
    print(f"lines: {n} ({mb:.1f} MB), best of {args.runs} runs, one core, tz {args.tz}")
    print(f"record reader: {fastpath.PARSER}; the compiled reader answers {answered / n:.1%} of these lines")
    print(f"{'':48}{'lines/s':>12}{'µs/line':>10}{'vs naive':>10}")
    for label, t in (
        ("naive split + orjson (baseline)", t_base),
        (f"jobcompd parse_batch, {BATCH} lines a batch", t_all),
        ("  the same on the Python reader alone", t_python),
    ):
        print(f"{label:48}{n / t:12,.0f}{t / n * 1e6:10.2f}{t_base / t:10.2f}")
    print("  (parse_batch: parse + encode + record id, as the parse worker runs it)")
    print("goal: >= 150,000 lines/s for parse + encode")
    hostile(args.runs)


def per_line(line: bytes, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        parse_line(line)
    return (time.perf_counter() - start) / repeat


def hostile(runs: int) -> None:
    """µs per line of hostile lines, and their time per byte against an ordinary line's."""
    base = ordinary_line()
    t_base = min(per_line(base, 2000) for _ in range(runs))
    sizes = (16_384, 32_768, 65_000)
    by_size = {size: hostile_lines(size) for size in sizes}
    print()
    print(f"hostile lines (ordinary line: {len(base)} bytes, {t_base * 1e6:.1f} µs); "
          "µs per line, and in () its time per byte over the ordinary line's")
    print(f"{'shape':42}" + "".join(f"{f'{size // 1024} KiB':>18}" for size in sizes))
    for shape in by_size[sizes[0]]:
        cells = []
        for size in sizes:
            line = by_size[size][shape]
            t = min(per_line(line, 5) for _ in range(runs))
            ratio = (t / len(line)) / (t_base / len(base))
            cells.append(f"{t * 1e6:10.0f} ({ratio:4.2f})")
        print(f"{shape:42}" + "".join(f"{c:>18}" for c in cells))
    print("linear: the ratio in () stays flat from 16 to 64 KiB")


if __name__ == "__main__":
    main()
