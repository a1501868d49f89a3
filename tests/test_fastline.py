"""The compiled reader (jobcompd/_fastline.c) against its Python twin, the reference.

Wherever the compiled reader answers for a line, the Python reader must read a record from it
with the same JSON bytes, the same record id and the same job id; and a batch read with both
readers is the batch read with the Python reader alone. The compiled reader may leave any line
to Python ("not mine"), but must answer for the usual records.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from jobcompd import batch, fastpath
from jobcompd.batch import ParseSpec, RecordBatch, encoder_for
from jobcompd.joining import parse_records, unfinished_tail
from jobcompd.record import DEFAULT_MAX_LINE_BYTES, JobRecord, parse_line
from jobcompd.zone import resolve
from tests.slurmctld import GENERATIONS, FakeJob, hostile_lines, mixed_lines, ordinary_line, render
from tests.test_record import jobs

pytestmark = pytest.mark.skipif(
    fastpath.PARSER != "compiled", reason=f"the compiled reader is not in use: {fastpath.PARSER}"
)

REAL_LOG = Path(__file__).parent / "data" / "real-plugin-26.05" / "jobcomp-filetxt.log"
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata", "Australia/Lord_Howe"]


def spec_for(zone: str, cluster: str | None = "fallback", max_bytes: int = DEFAULT_MAX_LINE_BYTES) -> ParseSpec:
    return ParseSpec(resolve(zone).spec, cluster, max_bytes)


def assert_agrees(line: bytes, spec: ParseSpec) -> bool:
    """Whether the compiled reader answered for ``line``; when it did, it agrees with Python."""
    compiled = fastpath.compiled_encoder(*spec)
    answer = compiled.encode_line(line)
    if answer is None:
        return False
    rid, jobid, payload = answer
    record = parse_line(line, max_bytes=spec.max_line_bytes)
    assert isinstance(record, JobRecord), (line, record)
    assert not record.ambiguous, line
    encoder = encoder_for(spec.zone, spec.cluster)
    assert payload == encoder.encode(record), line
    assert rid == encoder.record_id(line, record), line
    assert jobid == record.jobid
    return True


def assert_batches_agree(lines: list[bytes], spec: ParseSpec) -> RecordBatch:
    both = batch.parse_batch(lines, spec)
    python = batch._parse_batch(lines, spec, None)
    assert both._replace(typed=False) == python and not python.typed
    # Vouched for (the state does not check its types) only when the compiled reader read it all.
    answered = fastpath.compiled_encoder(*spec).encode_lines(lines)[3]
    assert both.typed == (len(answered) == len(lines))
    if both.typed:
        assert_typed(both)
    return both


def assert_typed(records: RecordBatch) -> None:
    assert all(type(rid) is str and len(rid) == 32 and int(rid, 16) >= 0 for rid in records.rids)
    assert all(type(jobid) is int and 0 <= jobid < 2**32 for jobid in records.jobids)
    assert all(type(payload) is bytes for payload in records.payloads)


@pytest.mark.parametrize("zone", ZONES)
def test_usual_records_of_every_generation_are_answered_alike(zone: str) -> None:
    spec = spec_for(zone)
    lines = mixed_lines(3000, seed=11, zone=resolve(zone).tz)
    answered = sum(assert_agrees(line, spec) for line in lines)
    # The generator's jobs include hostile names (fake field runs) that only Python reads.
    assert answered > 0.8 * len(lines)
    assert_batches_agree(lines, spec)


def test_a_batch_the_compiled_reader_reads_whole_is_vouched_for_and_no_other() -> None:
    spec = spec_for("Europe/Berlin")
    usual = [line for line in mixed_lines(400, seed=5, zone=resolve("Europe/Berlin").tz)
             if assert_agrees(line, spec)]
    whole = batch.parse_batch(usual, spec)
    assert whole.typed and len(whole.rids) == len(usual)
    assert_typed(whole)
    assert not batch.parse_batch([*usual, b"not a record\n"], spec).typed  # a line left to Python
    assert not batch.parse_batch(usual, spec).then(batch._parse_batch(usual[:3], spec, None), len(usual)).typed
    assert whole.then(whole, len(usual)).typed


def test_the_real_plugins_workload_is_answered_alike() -> None:
    spec = spec_for("Europe/Berlin", cluster=None)
    lines = REAL_LOG.read_bytes().splitlines(keepends=True)
    left = [line[:12] for line in lines if not assert_agrees(line, spec)]
    # Python's: fake field runs in a name, a directory or after a reservation; a tab; bytes that
    # are not UTF-8; a name with a line break (two physical lines).
    assert left == [b"JobId=105 Us", b"JobId=108 Us", b"JobId=111 Us", b"JobId=112 Us", b"JobId=114 Us",
                    b"JobId=142 Us", b"line2 JobSta"]
    assert_batches_agree(lines, spec)


def test_hostile_lines_are_left_to_python_or_answered_alike() -> None:
    spec = spec_for("UTC")
    for line in hostile_lines(DEFAULT_MAX_LINE_BYTES - 600).values():
        assert_agrees(line, spec)
    assert_agrees(ordinary_line(), spec)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(jobs())
def test_generated_jobs_are_answered_alike(case: tuple[FakeJob, str, object]) -> None:
    job, generation, zone = case
    line = render(job, generation, zone)  # type: ignore[arg-type]
    assert_agrees(line, spec_for(zone.key))  # type: ignore[attr-defined]


def _mutations(base: bytes, rng: random.Random) -> list[bytes]:
    alphabet = b" =()/\\\"-:0123456789TAZaz_\t\r\n\x00\x7f\xc2\xa0\xe2\x80\xa8\xff" + b"JobId=UserId= Cluster="
    out = []
    for _ in range(300):
        data = bytearray(base)
        for _ in range(rng.randrange(1, 4)):
            at = rng.randrange(len(data) + 1)
            kind = rng.randrange(3)
            if kind == 0 and at < len(data):
                del data[at : at + rng.randrange(1, 8)]
            elif kind == 1:
                data[at:at] = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 4)))
            elif at < len(data):
                data[at] = rng.choice(alphabet)
        out.append(bytes(data))
    return out


@pytest.mark.parametrize("generation", GENERATIONS)
def test_mutated_lines_are_left_to_python_or_answered_alike(generation: str) -> None:
    spec = spec_for("Europe/Berlin")
    rng = random.Random(generation)
    job = FakeJob(array=(7, 3), het=(9, 1), work_dir="/home/a b", account="a c", wckey="w=1")
    for line in _mutations(render(job, generation, resolve("Europe/Berlin").tz), rng):
        assert_agrees(line, spec)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
@example(b"JobId=1 UserId=a(1) GroupId=b(2) Name=x JobState=COMPLETED\n")
def test_random_bytes_are_left_to_python_or_answered_alike(data: bytes) -> None:
    spec = spec_for("UTC")
    head = ordinary_line()[:120]
    for line in (data, head + data, ordinary_line()[:-1] + data):
        assert_agrees(line, spec)


@pytest.mark.parametrize(
    ("local", "zone"),
    [
        # Around the DST changes of 2026 in Berlin (gap 02:00-03:00 on 03-29, fold on 10-25),
        # New York and Lord Howe (a 30-minute change).
        ("2026-03-29T01:59:59", "Europe/Berlin"),
        ("2026-03-29T02:30:00", "Europe/Berlin"),
        ("2026-03-29T03:00:00", "Europe/Berlin"),
        ("2026-10-25T01:59:59", "Europe/Berlin"),
        ("2026-10-25T02:30:00", "Europe/Berlin"),
        ("2026-10-25T03:00:00", "Europe/Berlin"),
        ("2026-11-01T01:30:00", "America/New_York"),
        ("2026-04-05T01:45:00", "Australia/Lord_Howe"),
        ("2026-10-04T02:15:00", "Australia/Lord_Howe"),
        ("1900-01-01T00:00:00", "Europe/Berlin"),
        ("9998-12-31T23:59:59", "Asia/Kolkata"),
        ("2024-02-29T12:00:00", "UTC"),
    ],
)
def test_times_near_dst_changes_and_range_ends_are_answered_alike(local: str, zone: str) -> None:
    line = ordinary_line()
    for key in (b"StartTime=", b"EndTime=", b"SubmitTime=", b"EligibleTime="):
        at = line.index(key) + len(key)
        assert_agrees(line[:at] + local.encode() + line[at + 19 :], spec_for(zone))


@settings(max_examples=400, deadline=None)
@given(elapsed=st.integers(1, 200_000_000_000), cpus=st.integers(1, 2**32 - 1))
@example(elapsed=1, cpus=1)
@example(elapsed=3600, cpus=1)
@example(elapsed=1, cpus=2**32 - 1)
@example(elapsed=86_400 * 365 * 100, cpus=2**31 - 1)
@example(elapsed=2**33, cpus=2**30 - 1)
def test_cpu_hours_of_any_elapsed_time_and_cpu_count_are_pythons(elapsed: int, cpus: int) -> None:
    # The compiled reader writes the float's %.17g without printf (exact decimal expansion, half
    # to even); it answers wherever elapsed * cpus fits in 64 bits, and the bytes are Python's.
    start = -2_000_000_000  # 1906: room for 6,000 years of elapsed time
    line = render(FakeJob(start=start, end=start + elapsed, cpus=cpus, submit=start, eligible=start),
                  "23.02", resolve("UTC").tz)
    assert assert_agrees(line, spec_for("UTC")) == (elapsed * cpus < 2**63)


@pytest.mark.parametrize("special", ["/", '"', "\\", "é", "a"])
def test_strings_escaped_wherever_a_special_byte_falls_are_pythons(special: str) -> None:
    # Strings are copied eight bytes at a time between the bytes to escape: each place in a word,
    # runs of them, and lengths around the word's size.
    spec = spec_for("UTC")
    for length in range(0, 26):
        for at in range(length):
            text = "x" * at + special + "y" * (length - at - 1)
            for job in (FakeJob(work_dir="/" + text), FakeJob(name=text + "z"), FakeJob(work_dir=special * length + "w")):
                assert assert_agrees(render(job, "23.02", resolve("UTC").tz), spec), text


def test_record_ids_hash_long_lines_and_clusters_as_python_does() -> None:
    # BLAKE2b blocks are 128 bytes: lengths around the block edges, and each cluster fallback.
    base = ordinary_line()
    for pad in range(0, 300, 7):
        line = base.replace(b"Name=job", b"Name=" + b"j" * pad)
        for cluster in (None, "", "c", "x" * 200):
            assert assert_agrees(line, spec_for("UTC", cluster=cluster))
        assert assert_agrees(line.replace(b"Cluster=", b"Cluster=named"), spec_for("UTC"))


def test_each_byte_in_each_place_of_a_word_is_taken_or_left_as_python_would() -> None:
    # The compiled reader checks for printable ASCII eight bytes at a time: every byte value, in
    # each of the eight places of a word (16 places of the name), is read as one at a time would.
    spec = spec_for("UTC")
    base = ordinary_line()
    for place in range(16):
        for value in range(256):
            name = bytearray(b"j" * 16)
            name[place] = value
            line = base.replace(b"Name=job", b"Name=" + bytes(name))
            answered = assert_agrees(line, spec)
            if value < 0x20 or value >= 0x7F:  # a control byte, DEL, or UTF-8 cut short
                assert not answered, (place, value)
            elif value not in b" =":  # (a space or "=" may start what looks like a key)
                assert answered, (place, value)


def test_a_legacy_record_is_answered_only_where_it_stands_alone() -> None:
    spec = spec_for("UTC")
    zone = resolve("UTC").tz
    old = render(FakeJob(job_id=5, work_dir="/a"), "17.02", zone)
    new = render(FakeJob(job_id=6), "23.02", zone)
    for lines in (
        [old, new],
        [new, old],
        [old, b"rest of a name ReservationName= Tres= Account= QOS= WcKey= Cluster=c\n", new],
        [old, b"junk\n", old],
        [old, old, old],
    ):
        result = assert_batches_agree(lines, spec)
        assert [rid for rid in result.rids] == [rid for rid in batch._parse_batch(lines, spec, None).rids]


def test_batches_with_joined_records_and_bad_lines_agree() -> None:
    spec = spec_for("Europe/Berlin")
    zone = resolve("Europe/Berlin").tz
    split = render(FakeJob(job_id=7, name="two\nlines"), "23.02", zone)
    forged = render(FakeJob(job_id=8, name="evil\nJobId=77 UserId=root(0) GroupId=root(0) Name=y"), "23.02", zone)
    good = mixed_lines(50, seed=3, zone=zone)
    lines = [
        *good[:10], *split.splitlines(keepends=True), b"\n", b"garbage\n", *good[10:20],
        *forged.splitlines(keepends=True), *good[20:], b"JobId=9 cut short\n",
    ]
    result = assert_batches_agree(lines, spec)
    assert len(result.bad) == 3 and 8 in result.ambiguous
    assert [len(r) for r in (result.rids, result.jobids, result.payloads, result.at)] == [len(result.at)] * 4
    assert [i for i, _, r in parse_records(lines) if isinstance(r, JobRecord)] == result.at


def test_lines_held_back_are_the_python_readers() -> None:
    # The compiled reader only says which lines are a 17.11+ or a 17.02 record alone; what a
    # reader holds back at every cut of these lines is what the Python reader holds back. A newer
    # record cut in its working directory starts with a line that reads alone as a 17.02 record.
    spec = spec_for("Europe/Berlin")
    zone = resolve("Europe/Berlin").tz
    old = render(FakeJob(job_id=5, work_dir="/a"), "17.02", zone)
    split = render(FakeJob(job_id=7, name="two\nlines"), "23.02", zone).splitlines(keepends=True)
    forged = render(FakeJob(job_id=8, name="evil\nJobId=77 UserId=root(0) GroupId=root(0) Name=y"),
                    "23.02", zone).splitlines(keepends=True)
    cut = render(FakeJob(job_id=9, work_dir="/w x"), "23.02", zone)
    in_dir = render(FakeJob(job_id=11, work_dir="/a\nb"), "23.02", zone).splitlines(keepends=True)
    # A record start that reads as nothing, though its fields are there (not "headless"): held
    # back only while no other record starts after it.
    broken = render(FakeJob(job_id=10), "23.02", zone).replace(b" NodeCnt=2 ", b" NodeCnt=x ")
    good = mixed_lines(40, seed=5, zone=zone)
    lines = [*good[:5], *split, old, *good[5:9], *forged, cut[:60] + b"\n", cut, old, *in_dir, old,
             *good[9:], old, broken, good[0], broken, cut[:-1], old, *in_dir, *split[:1]]
    alone = fastpath.compiled_alone(spec.zone, spec.max_line_bytes)
    held = []
    for end in range(1, len(lines) + 1):
        python = unfinished_tail(lines[:end], max_bytes=spec.max_line_bytes)
        assert batch.unfinished_lines(lines[:end], spec) == python, end
        held.append(python)
    assert any(held) and not all(held)
    assert alone(good[0]) == "17.11+" and alone(old) == "17.02"
    assert alone(split[0]) is None and alone(b"garbage\n") is None and alone(in_dir[0]) == "17.02"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(
    mixed_lines(60, seed=9) + [line.replace(b" NodeCnt=", b" NodeCnt=x") for line in mixed_lines(20, seed=8)]
) | st.binary(max_size=200), max_size=12))
def test_random_cuts_hold_back_what_the_python_reader_holds_back(lines: list[bytes]) -> None:
    spec = spec_for("UTC")
    pieces = [piece for line in lines for piece in line.splitlines(keepends=True)]
    assert batch.unfinished_lines(pieces, spec) == unfinished_tail(pieces)


def test_the_line_cap_is_the_python_readers() -> None:
    line = ordinary_line()
    size = len(line) - 1
    assert assert_agrees(line, spec_for("UTC", max_bytes=size))
    assert not assert_agrees(line, spec_for("UTC", max_bytes=size - 1))


def test_the_python_path_is_chosen_by_the_environment() -> None:
    code = "from jobcompd import fastpath; print(fastpath.PARSER, fastpath.compiled_encoder(None, None, 1))"
    env = {**os.environ, "JOBCOMPD_PARSER": "python"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "python (JOBCOMPD_PARSER=python) None"


@pytest.mark.parametrize("generation", GENERATIONS)
def test_a_name_with_key_text_that_starts_no_run_is_answered_alike(generation: str) -> None:
    zone = resolve("UTC").tz
    spec = spec_for("UTC")
    for name in ("job JobState=FAILED123", "a JobState= Partition=x", "JobState=X Partition=y", "b JobState=a Partition="):
        assert assert_agrees(render(FakeJob(name=name), generation, zone), spec), name
    # A fake copy of the run (a state, then " Partition="): two readings, the Python reader's.
    for name in ("x JobState=FAILED Partition=p", "y JobState=A_B Partition=p TimeLimit=1"):
        assert not assert_agrees(render(FakeJob(name=name), generation, zone), spec), name


def test_a_batch_read_again_with_its_hours_cached_is_the_same() -> None:
    # A fresh encoder knows no hour: the first reading of a batch reads its lines again with the
    # interpreter (to ask Python for each hour's offset); the second reads them all without it.
    spec = spec_for("Europe/Berlin")
    lines = mixed_lines(500, seed=21, zone=resolve("Europe/Berlin").tz)
    fresh = fastpath._compiled.Encoder(
        fastpath.offset_of_hour(resolve("Europe/Berlin").tz), b"fallback", spec.max_line_bytes,
        fastpath.RECORD_ID_PERSON,
    )
    first = fresh.encode_lines(lines)
    assert len(first[3]) > 0.8 * len(lines)
    assert fresh.encode_lines(lines) == first
    assert fastpath.compiled_encoder(*spec).encode_lines(lines) == first
    assert_batches_agree(lines, spec)


def test_a_batch_is_read_while_other_threads_run() -> None:
    spec = spec_for("UTC")
    compiled = fastpath.compiled_encoder(*spec)
    lines = mixed_lines(2000, seed=5, zone=resolve("UTC").tz) * 10
    compiled.encode_lines(lines[:2000])  # every hour cached: the batch needs no interpreter
    done = threading.Event()
    ticks: list[float] = []

    def count() -> None:
        while not done.is_set():
            ticks.append(time.perf_counter())

    counter = threading.Thread(target=count)
    counter.start()
    try:
        time.sleep(0.05)
        start = time.perf_counter()
        answered = compiled.encode_lines(lines)  # about 0.1 s
        end = time.perf_counter()
    finally:
        done.set()
        counter.join()
    assert len(answered[3]) > 0.8 * len(lines)
    # Holding the interpreter, the call would let the other thread run only at its two ends.
    margin = (end - start) / 5
    during = [t for t in ticks if start + margin < t < end - margin]
    assert len(during) > 1000, (len(during), end - start)


def test_a_batch_of_several_chunks_reads_as_the_python_reader_does() -> None:
    # The compiled reader reads a batch's lines without the interpreter a chunk of them at a time
    # (CHUNK_BYTES): here a record's first line is the first chunk's last, and the rest of it is
    # in the next chunk. A 17.02 line reads as a whole record alone; its work dir holds a line
    # break, so it is one only with the line after it (which the compiled reader must look at).
    spec = spec_for("Europe/Berlin")
    zone = resolve("Europe/Berlin").tz
    chunk = fastpath._compiled.CHUNK_BYTES
    filler = iter(mixed_lines(3 * chunk // 200, seed=9, zone=zone))
    lines: list[bytes] = []
    size = 0
    while size + len(line := next(filler)) < chunk:
        lines.append(line)
        size += len(line)
    short = render(FakeJob(job_id=7, work_dir="/a\nb"), "17.02", zone).splitlines(keepends=True)
    pad = max(0, chunk - size - len(short[0]))
    split = render(FakeJob(job_id=7, name="x" * (pad + 1), work_dir="/a\nb"), "17.02", zone)
    first, rest = split.splitlines(keepends=True)
    assert size < chunk <= size + len(first)  # the chunk ends with the record's first line
    lines += [first, rest, *filler]
    assert sum(map(len, lines)) > 2 * chunk
    result = assert_batches_agree(lines, spec)
    assert 7 in result.jobids and not result.typed


def test_threads_sharing_an_encoder_read_as_one_thread_does() -> None:
    spec = spec_for("America/New_York")
    zone = resolve("America/New_York").tz
    batches = [mixed_lines(400, seed=seed, zone=zone) for seed in range(8)]
    compiled = fastpath._compiled.Encoder(
        fastpath.offset_of_hour(zone), b"fallback", spec.max_line_bytes, fastpath.RECORD_ID_PERSON
    )
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(compiled.encode_lines, batches * 3))
    alone = [fastpath.compiled_encoder(*spec).encode_lines(lines) for lines in batches]
    assert together == alone * 3
