"""Opening a jobcomp log for reading: plain, or a rotated copy compressed with gzip, bzip2 or xz.

The one place that knows log files on disk: how to read one — for the tailer by offset
(:func:`open_reader`: renames and unlinks do not matter), for ``jobcompd parse`` and ``replay`` as
a forward stream (:func:`open_log`) — and why one cannot be read (:func:`log_problem`, for the
tailer's error and ``check-config``). Compression is recognised by the file's first bytes, never
by its name alone.
"""

from __future__ import annotations

import bz2
import errno
import gzip
import lzma
import os
import stat
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, Protocol

__all__ = [
    "COMPRESSED_SUFFIXES",
    "BATCH_LINES",
    "CHUNK",
    "DecompressedReader",
    "LogProblem",
    "PlainReader",
    "Reader",
    "compression",
    "end_of_lines",
    "first_line",
    "log_problem",
    "nearest_existing",
    "open_log",
    "open_reader",
]

# One read of a log: the lines of a batch come from one. A batch's lines, records, payloads and
# their spool row are all alive at once (two batches when one is read ahead), so this is most of
# the memory a backlog costs: 512 KiB keeps a 1M-record backlog under 60 MB; 1 MiB took 5 MB more
# for no measurable speed.
CHUNK = 1 << 19
BATCH_LINES = 2000
"""Lines read (and parsed, and committed) together, by the daemon and by ``replay``."""
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz")
_MAGIC = ((b"\x1f\x8b", "gzip"), (b"BZh", "bz2"), (b"\xfd7zXZ\x00", "xz"))
STREAM_ERRORS = (EOFError, OSError, lzma.LZMAError, zlib.error)
"""What reading a damaged or cut-short compressed file raises."""


def compression(magic: bytes) -> str | None:
    """``"gzip"``, ``"bz2"`` or ``"xz"`` for a file starting with ``magic``; None for a plain one."""
    for prefix, kind in _MAGIC:
        if magic.startswith(prefix):
            return kind
    return None


def _decompressor(kind: str, raw: IO[bytes]) -> BinaryIO:
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    if kind == "bz2":
        return bz2.BZ2File(raw)  # type: ignore[return-value]
    return lzma.LZMAFile(raw)  # type: ignore[return-value]


# Lines are read from a buffer this big: with the default 8 KiB (a read every ~20 lines), reading
# them cost twice as much.
_READ_BUFFER = 1 << 20


def open_log(name: str) -> BinaryIO:
    """A log file as a stream of its (decompressed) bytes, or ``-`` for stdin.

    :func:`raw_offset` tells how far into the file on disk the stream has read (for progress).
    """
    if name == "-":
        return sys.stdin.buffer
    fh: BinaryIO = open(name, "rb", buffering=_READ_BUFFER)  # noqa: SIM115 - returned to the caller
    try:
        kind = compression(fh.peek(6)[:6])  # type: ignore[attr-defined]
        return fh if kind is None else _Stream(fh, kind)  # type: ignore[return-value]
    except BaseException:
        fh.close()
        raise


class _Stream:
    """A decompressed stream that closes its file and tells how far into it it has read."""

    def __init__(self, raw: BinaryIO, kind: str) -> None:
        self.raw = raw
        self.kind = kind
        self._stream = _decompressor(kind, raw)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __iter__(self) -> Any:
        return iter(self._stream)

    def fileno(self) -> int:
        return self.raw.fileno()

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()
        self.raw.close()


def raw_offset(fh: BinaryIO) -> int:
    """How many bytes of the file on disk ``fh`` (from :func:`open_log`) has consumed."""
    raw = fh.raw if isinstance(fh, _Stream) else fh  # type: ignore[attr-defined]
    return raw.tell()


def is_compressed(fh: BinaryIO) -> bool:
    """Whether ``fh`` (from :func:`open_log`) decompresses its file."""
    return isinstance(fh, _Stream)


class Reader(Protocol):
    """A file read by offset (see :func:`open_reader`)."""

    failed: str | None

    def pread(self, offset: int, size: int) -> bytes: ...

    def size(self) -> int | None: ...

    def fstat(self) -> os.stat_result: ...

    def close(self) -> None: ...


class PlainReader:
    """A plain file, read by offset through its descriptor (renames and unlinks do not matter)."""

    failed: str | None = None

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def pread(self, offset: int, size: int) -> bytes:
        return os.pread(self.fd, size, offset)

    def size(self) -> int | None:
        return os.fstat(self.fd).st_size

    def fstat(self) -> os.stat_result:
        return os.fstat(self.fd)

    def close(self) -> None:
        os.close(self.fd)


class DecompressedReader:
    """A compressed rotated file, read forward through a window; reading backwards restarts it."""

    def __init__(self, fd: int, kind: str) -> None:
        self._raw = os.fdopen(fd, "rb")
        self.kind = kind
        self._stream: Any = None
        self._restart()

    def _restart(self) -> None:
        if self._stream is not None:
            self._stream.close()
        self._raw.seek(0)
        self._stream = _decompressor(self.kind, self._raw)
        self._pos = 0
        self._buf = b""
        self._eof = False
        self.failed: str | None = None

    def pread(self, offset: int, size: int) -> bytes:
        if offset < self._pos:
            self._restart()
        while True:
            drop = min(offset - self._pos, len(self._buf))
            if drop:
                self._buf = self._buf[drop:]
                self._pos += drop
            if self._eof or (self._pos == offset and len(self._buf) >= size):
                break
            chunk = self._read()
            if chunk:
                self._buf += chunk
            else:
                self._eof = True
        return self._buf[:size] if self._pos == offset else b""

    def _read(self) -> bytes:
        try:
            return bytes(self._stream.read(CHUNK))
        except STREAM_ERRORS as exc:
            self.failed = f"{type(exc).__name__}: {exc}"
            return b""

    def size(self) -> int | None:
        return None

    def size_hint(self) -> int | None:
        """The uncompressed size modulo 2**32 from a gzip trailer (of its last member)."""
        if self.kind != "gzip":
            return None
        size = self.fstat().st_size
        if size <= 4:
            return None
        return int.from_bytes(os.pread(self._raw.fileno(), 4, size - 4), "little")

    def fstat(self) -> os.stat_result:
        return os.fstat(self._raw.fileno())

    def close(self) -> None:
        self._stream.close()
        self._raw.close()


def open_reader(path: str, *, plain_only: bool = False) -> tuple[Reader, os.stat_result] | None:
    """Open ``path`` for reading (decompressing rotated files); None if it is gone or no file,
    or if its name says compressed and its first bytes do not (yet: gzip is still writing it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        kind = None if plain_only else compression(os.pread(fd, 6, 0))
        named = not plain_only and path.endswith(COMPRESSED_SUFFIXES)
        if not stat.S_ISREG(st.st_mode) or (named and kind is None):
            os.close(fd)
            return None
        return (PlainReader(fd) if kind is None else DecompressedReader(fd, kind)), st
    except OSError:
        os.close(fd)
        return None


def first_line(reader: Reader, limit: int, *, final: bool) -> bytes | None:
    """The first line as the tailer delivers it (an over-long one cut to ``limit`` bytes).

    None while it is not complete; a file that is ``final`` (closed for good) may end without a
    newline, and then what it holds is its first line.
    """
    data = reader.pread(0, limit)
    nl = data.find(b"\n")
    if nl >= 0:
        return data[: nl + 1]
    if len(data) < limit:
        return data if final and data and reader.failed is None else None
    pos = limit
    while chunk := reader.pread(pos, CHUNK):
        if b"\n" in chunk:
            return data
        pos += len(chunk)
    return data if final else None


def end_of_lines(reader: Reader, size: int) -> tuple[int, int]:
    """Offset just after the last complete line within ``size`` bytes, and the lines before it."""
    pos = last = count = 0
    while pos < size:
        chunk = reader.pread(pos, min(CHUNK, size - pos))
        if not chunk:
            break
        n = chunk.count(b"\n")
        if n:
            count += n
            last = pos + chunk.rfind(b"\n") + 1
        pos += len(chunk)
    return last, count


@dataclass(frozen=True)
class LogProblem:
    """Why the log cannot be read; ``blocked`` is what to make readable when permissions are why."""

    reason: str
    blocked: Path | None = None

    def __str__(self) -> str:
        return self.reason


_UNLISTABLE = "its directory {} cannot be listed (permission denied): rotation cannot be followed"


def log_problem(path: Path) -> LogProblem | None:
    """Why the log at ``path`` cannot be read, or None if it can — or simply does not exist yet
    (slurmctld creates it at the first finished job) in a directory this user can look into."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        parent = nearest_existing(path.parent)
        if parent != path.parent:
            return None  # the directory will be made by whoever makes the log
        if not os.access(parent, os.R_OK | os.X_OK):
            return LogProblem(_UNLISTABLE.format(parent), parent)
        return None
    except PermissionError:
        blocked = _blocked_dir(path)
        return LogProblem(f"a directory above it cannot be searched (permission denied): {blocked}", blocked)
    except OSError as exc:
        return LogProblem(f"cannot be looked at: {exc.strerror}")
    if stat.S_ISDIR(st.st_mode):
        return LogProblem("is a directory, not the log file (source.path, or JobCompLoc in slurm.conf)")
    if not stat.S_ISREG(st.st_mode):
        return LogProblem("is not a regular file")
    try:
        os.close(os.open(path, os.O_RDONLY))
    except OSError as exc:
        if exc.errno == errno.EACCES:
            return LogProblem("exists but cannot be read (permission denied)", path)
        return LogProblem(f"cannot be opened: {exc.strerror}")
    if not os.access(path.parent, os.R_OK | os.X_OK):
        return LogProblem(_UNLISTABLE.format(path.parent), path.parent)
    return None


def nearest_existing(path: Path) -> Path:
    """``path``, or its nearest ancestor that exists."""
    while not os.path.exists(path) and path != path.parent:
        path = path.parent
    return path


def _blocked_dir(path: Path) -> Path:
    """The first directory above ``path`` this user cannot search."""
    for parent in reversed(path.parents):
        if not os.access(parent, os.X_OK):
            return parent
    return path.parent
