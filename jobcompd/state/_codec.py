"""How a spool row's payloads are stored: end to end, compressed as one Zstandard frame.

A batch's JSON payloads share most of their bytes (the keys, the cluster, the partition), so one
frame of them is about an eighth of their size: a commit writes and checksums an eighth of the
pages and write-ahead log frames. The frame carries its content size and a checksum, so a row
damaged on disk is refused, never sent as other bytes. Rows of states written before schema 5 are
raw (``RAW``) and read as they are.
"""

from __future__ import annotations

import threading
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate, pairwise
from typing import BinaryIO

import zstandard

RAW = 0
"""A row's payloads end to end, as they are."""

ZSTD = 1
"""A row's payloads end to end, in one Zstandard frame with its content size and checksum."""

LEVEL = 1
"""Zstandard's fastest level with its full ratio (about 8 to 1 on jobcomp JSON)."""

_local = threading.local()  # a compressor is not thread-safe: one per thread


def pack(payloads: Sequence[bytes]) -> bytes:
    """``payloads`` end to end, in one frame (Zstandard works without the interpreter lock): what
    the spool stores for them. The parse thread makes it beside the commit, which takes it as it is
    when the batch is stored whole."""
    compressor = getattr(_local, "compressor", None)
    if compressor is None:
        compressor = _local.compressor = zstandard.ZstdCompressor(
            level=LEVEL, write_checksum=True, write_content_size=True
        )
    # Fed to the frame a piece at a time: one buffer of a whole batch's payloads (a megabyte) is
    # above glibc's mmap threshold (jobcompd._memory), so each was a fresh mapping whose every
    # page faulted on first touch: a quarter of the packing's time went to that. The frame is as big.
    ends = list(accumulate(map(len, payloads)))
    if not ends or ends[-1] <= _PIECE:
        return compressor.compress(b"".join(payloads))
    frame = compressor.compressobj(size=ends[-1])
    cuts = [0, *(bisect_left(ends, at) + 1 for at in range(_PIECE, ends[-1], _PIECE)), len(payloads)]
    out = [frame.compress(b"".join(payloads[a:b])) for a, b in pairwise(cuts) if a < b]
    out.append(frame.flush())
    return b"".join(out)


_PIECE = 1 << 16
"""Bytes of payloads joined to be fed to a frame at once: well under glibc's mmap threshold."""


def packed_size(packed: bytes) -> int:
    """The bytes a frame made by :func:`pack` holds (from its header); -1 if it says none."""
    try:
        return int(zstandard.frame_content_size(packed))
    except zstandard.ZstdError:
        return -1


def read(blob: BinaryIO, codec: int, start: int, end: int, total: int) -> bytes:
    """Bytes ``start:end`` of a row's ``total`` bytes of payloads, from its ``blob`` (read in
    pieces: memory stays at what is asked for). Raises ``ValueError`` for a codec this version does
    not know and ``zstandard.ZstdError`` for a damaged or cut frame."""
    if codec == RAW:
        blob.seek(start)
        return blob.read(end - start)
    if codec != ZSTD:
        raise ValueError(f"payloads stored with codec {codec}, unknown to this version")
    with zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=False, closefd=False) as frame:
        frame.seek(start)
        out = frame.read(end - start)
        while frame.read(_CHUNK):  # to its end, where its checksum is checked
            pass
        seen = frame.tell()
    if seen != total or len(out) != end - start:
        raise zstandard.ZstdError(f"the frame holds {seen} bytes of payloads, not {total}")
    return out


_CHUNK = 1 << 18
