"""Opening logs (plain, gzip, bz2, xz) by offset and as a stream, and why one cannot be read."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
from pathlib import Path

import pytest

from jobcompd.logfile import (
    DecompressedReader,
    PlainReader,
    compression,
    end_of_lines,
    first_line,
    log_problem,
    open_log,
    open_reader,
    raw_offset,
)

TEXT = b"".join(b"JobId=%d line\n" % i for i in range(5000))


@pytest.mark.parametrize(
    ("suffix", "compress", "kind"),
    [("", None, None), (".gz", gzip.compress, "gzip"), (".bz2", bz2.compress, "bz2"), (".xz", lzma.compress, "xz")],
)
def test_every_kind_reads_the_same_bytes(tmp_path: Path, suffix: str, compress: object, kind: str | None) -> None:
    path = tmp_path / f"jobcomp.log.1{suffix}"
    path.write_bytes(compress(TEXT) if callable(compress) else TEXT)
    assert compression(path.read_bytes()[:6]) == kind
    with open_log(str(path)) as stream:
        assert stream.read() == TEXT
        assert raw_offset(stream) == path.stat().st_size
    opened = open_reader(str(path))
    assert opened is not None
    reader, _ = opened
    try:
        assert isinstance(reader, PlainReader if kind is None else DecompressedReader)
        assert reader.pread(13 * 1000, 9) == TEXT[13 * 1000 : 13 * 1000 + 9]
        assert reader.pread(0, 8) == TEXT[:8]  # backwards: a compressed one starts over
        assert first_line(reader, 64, final=False) == b"JobId=0 line\n"
        if kind is None:
            assert end_of_lines(reader, len(TEXT) - 3) == (TEXT.rindex(b"\n", 0, len(TEXT) - 3) + 1, 4999)
    finally:
        reader.close()


def test_a_name_that_says_compressed_is_not_read_as_plain_before_it_is(tmp_path: Path) -> None:
    half_written = tmp_path / "jobcomp.log.2.gz"
    half_written.write_bytes(b"")  # gzip has not written its header yet
    assert open_reader(str(half_written)) is None
    assert open_reader(str(tmp_path)) is None  # not a regular file


def test_why_a_log_cannot_be_read(tmp_path: Path) -> None:
    log = tmp_path / "slurm_jobcomp.log"
    assert log_problem(log) is None  # not there yet: waited for, not an error
    assert log_problem(tmp_path / "no-dir" / "slurm_jobcomp.log") is None  # made with its directory
    log.mkdir()
    problem = log_problem(log)
    assert problem is not None and problem.reason.startswith("is a directory") and problem.blocked is None
    log.rmdir()
    log.write_bytes(TEXT)
    assert log_problem(log) is None
    if os.geteuid() != 0:  # root reads anything; check-config --user covers it as root
        log.chmod(0)
        problem = log_problem(log)
        assert problem is not None and "permission denied" in problem.reason and problem.blocked == log
