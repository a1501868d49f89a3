"""Coverage-guided fuzzing of the record parser, the joining of split records and the encoder.

    python fuzz/fuzz_record.py SECONDS [atheris/libFuzzer options...]

Any input must give, for every group of lines, a :class:`JobRecord` whose JSON is valid UTF-8 JSON,
or a :class:`ParseError` with a reason — never an exception, never more than 100 ms for one line
(the parser is linear: 64 KiB take a few milliseconds) — and where the one-reading shortcut
answers, the general reader must give the same record. The corpus is seeded from the test lines
(every Slurm generation, the real plugin's workload, hostile values) in a scratch directory.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports():
    from jobcompd import record
    from jobcompd.encode import Encoder
    from jobcompd.joining import parse_records
    from jobcompd.record import JobRecord, ParseError

from tests.slurmctld import GENERATIONS, FakeJob, mixed_lines, render  # noqa: E402

_ENCODER = Encoder(ZoneInfo("Europe/Berlin"), "fuzz")
_SLOW_S = 0.1


def one_input(data: bytes) -> None:
    lines = data.splitlines(keepends=True)[:64]
    began = time.perf_counter()
    groups = parse_records(lines)
    spent = time.perf_counter() - began
    if spent > _SLOW_S * max(1, len(lines)):
        raise AssertionError(f"{len(lines)} lines ({len(data)} bytes) took {spent:.3f} s")
    covered = 0
    for index, count, result in groups:
        assert index == covered and count >= 1, (index, count, covered)
        covered += count
        if isinstance(result, ParseError):
            assert result.reason, "a quarantined line without a reason"
            continue
        assert isinstance(result, JobRecord), result
        payload = _ENCODER.encode(result)
        message = json.loads(payload.decode("utf-8"))
        assert message["jobid"] == result.jobid and 0 <= result.jobid < 2**32
        raw = b"".join(lines[index : index + count])
        _ENCODER.record_id(raw, result)
        # Where the one-reading shortcut answers, the general reader must agree.
        text = raw.rstrip(b"\r\n").decode(errors="replace")
        fast = record._one_reading(text)
        if fast is not None:
            start = record._START.match(text)
            assert start is not None and fast == record._read(text, start), text
    assert covered == len(lines)


def seed(directory: Path) -> None:
    """The test lines, one file each: every generation, the real workload, hostile values."""
    zone = ZoneInfo("Europe/Berlin")
    seeds = list(mixed_lines(200, seed=7, zone=zone))
    hostile = FakeJob(name="x\nJobState=FAILED Partition=y", work_dir="/a ReservationName=b Tres= Account=c")
    seeds += [render(hostile, generation, zone) for generation in GENERATIONS]
    real = ROOT / "tests" / "data" / "real-plugin-26.05" / "jobcomp-filetxt.log"
    seeds += real.read_bytes().splitlines(keepends=True)
    for i, line in enumerate(seeds):
        (directory / f"seed-{i:04d}").write_bytes(line)


def main() -> None:
    seconds = int(sys.argv[1]) if len(sys.argv) > 1 else 60
    extra = sys.argv[2:]
    with tempfile.TemporaryDirectory(prefix="jobcompd-fuzz-") as scratch:
        corpus = Path(scratch) / "corpus"
        corpus.mkdir()
        seed(corpus)
        artifacts = Path(os.environ.get("JOBCOMPD_FUZZ_ARTIFACTS", scratch))
        argv = [
            sys.argv[0],
            f"-max_total_time={seconds}",
            "-timeout=5",
            "-max_len=70000",
            "-rss_limit_mb=2048",
            f"-artifact_prefix={artifacts}/",
            "-print_final_stats=1",
            *extra,
            str(corpus),
        ]
        atheris.Setup(argv, one_input)
        atheris.Fuzz()


if __name__ == "__main__":
    main()
