"""Coverage-guided fuzzing of the record parser, the joining of split records and the encoder.

    python fuzz/fuzz_record.py SECONDS [atheris/libFuzzer options...]

Any input must give, for every group of lines, a :class:`JobRecord` whose JSON is valid UTF-8 JSON,
or a :class:`ParseError` with a reason — never an exception, never more than 100 ms for one line
(the parser is linear: 64 KiB take a few milliseconds) — and where the one-reading shortcut
answers, the general reader must give the same record; where the compiled reader answers, its
JSON bytes, record id and job id are the Python reader's, a batch read with both is the batch
read with Python alone, and the lines held back at a batch's end are the Python reader's. The
corpus is seeded from the test lines (every Slurm generation, the real plugin's workload, hostile
values) in ``build/fuzz/scratch``, made anew each run (libFuzzer ends the process with ``exit()``,
so nothing Python would clean up at its end is cleaned up; crash inputs stay there too).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import atheris

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# JOBCOMPD_FUZZ_FASTLINE=path/to/_fastline.so: fuzz that build of the compiled reader (make fuzz
# builds one with AddressSanitizer, so a read out of the line's bounds stops the run).
_build = os.environ.get("JOBCOMPD_FUZZ_FASTLINE")
if _build:
    _loader = importlib.util.spec_from_file_location("jobcompd._fastline", _build)
    assert _loader is not None and _loader.loader is not None
    sys.modules["jobcompd._fastline"] = importlib.util.module_from_spec(_loader)
    _loader.loader.exec_module(sys.modules["jobcompd._fastline"])

with atheris.instrument_imports():
    from jobcompd import batch, fastpath, record
    from jobcompd.encode import Encoder
    from jobcompd.joining import parse_records, unfinished_tail
    from jobcompd.record import JobRecord, ParseError
    from jobcompd.zone import resolve

from tests.slurmctld import GENERATIONS, FakeJob, mixed_lines, render  # noqa: E402

_ENCODER = Encoder(ZoneInfo("Europe/Berlin"), "fuzz")
_SPEC = batch.ParseSpec(resolve("Europe/Berlin").spec, "fuzz", record.DEFAULT_MAX_LINE_BYTES)
_COMPILED = fastpath.compiled_encoder(*_SPEC)
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
    if _COMPILED is not None:
        # Where the compiled reader answers, its bytes are the Python reader's.
        for line in lines:
            answer = _COMPILED.encode_line(line)
            if answer is not None:
                rid, jobid, payload = answer
                parsed = record.parse_line(line)
                assert isinstance(parsed, JobRecord) and not parsed.ambiguous, (line, parsed)
                assert payload == _ENCODER.encode(parsed), line
                assert rid == _ENCODER.record_id(line, parsed) and jobid == parsed.jobid, line
        both = batch.parse_batch(lines, _SPEC)
        assert both._replace(typed=False) == batch._parse_batch(lines, _SPEC, None), lines
        # Vouched for (its types not checked again) only when the compiled reader read every line.
        assert both.typed == (len(_COMPILED.encode_lines(lines)[3]) == len(lines)), lines
        # What a reader holds back is the same when the compiled reader vouches for whole lines.
        for end in range(1, len(lines) + 1):
            cut = lines[:end]
            assert batch.unfinished_lines(cut, _SPEC) == unfinished_tail(cut), cut


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
    print(f"reader: {fastpath.PARSER}" + (f" ({_build})" if _build else ""), flush=True)
    extra = sys.argv[2:]
    scratch = ROOT / "build" / "fuzz" / "scratch"
    shutil.rmtree(scratch, ignore_errors=True)
    corpus = scratch / "corpus"
    corpus.mkdir(parents=True)
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
