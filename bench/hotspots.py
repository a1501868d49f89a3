"""py-spy profiles of jobcompd, reduced to the functions where the samples are.

py-spy samples the Python stacks of every thread from outside the process, and of its parse
worker (``--subprocesses``; ``--format raw``: one collapsed stack per line,
``frame;frame;…;leaf COUNT``; ``-F`` aggregates by function).
Time spent inside C code — SQLite, librdkafka, orjson, the regex engine — is charged to the
Python function that called it, which is what tells where jobcompd's code should change.
Idle threads (waiting in poll, sleep or a lock with the GIL released) are not counted.
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.harness import spawn, terminate

RATE_HZ = 100

# Blocking waits py-spy does not always recognise as idle (the GIL is released inside them): a
# sample whose innermost frame is one of these is a thread waiting, not working, and is left out.
WAITS = frozenset(
    (
        "Condition.wait (threading.py)",
        "Event.wait (threading.py)",
        "Thread._wait_for_tstate_lock (threading.py)",
        "Queue.get (queue.py)",
        "InotifyFD._check_inotify_fd (watchdog/observers/inotify_c.py)",
        "InotifyFD.read_events (watchdog/observers/inotify_c.py)",
        "read_frame (jobcompd/_parse_child.py)",  # the parse worker, or its reader thread, waiting
        "_Child._write (jobcompd/ingest.py)",  # the parse worker's writer thread, waiting for a batch
        "_worker (concurrent/futures/thread.py)",  # the parse thread, waiting for a batch
    )
)

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")

# Pipeline stages: a jobcompd frame (as `_short` writes it) and what its inclusive samples stand for.
STAGES = (
    ("Tailer.read (jobcompd/tailer/__init__.py)", "tailer: complete lines from the log"),
    ("Ingestor.commit (jobcompd/ingest.py)", "ingest: wait for the parse + spool commit"),
    ("Spool.commit_batch (jobcompd/state/_spool.py)", "  State.commit_batch (SQLite insert)"),
    ("main (jobcompd/_parse_child.py)", "parse worker (child process): parse + encode + id + framing"),
    ("parse_batch (jobcompd/batch.py)", "  parse_batch (parse thread or worker; in place for small batches)"),
    ("parse_line (jobcompd/record.py)", "  parse_line"),
    ("Encoder.encode (jobcompd/encode.py)", "  Encoder.encode (dict + orjson)"),
    ("Encoder.record_id (jobcompd/encode.py)", "  Encoder.record_id (BLAKE2b)"),
    ("Sender.pump (jobcompd/producer.py)", "sender: produce + poll + settle"),
    ("Spool.pending (jobcompd/state/_spool.py)", "  State.pending (spool fetch)"),
    ("Sender._produce_backlog (jobcompd/producer.py)", "  Sender._produce_backlog (Producer.produce)"),
    ("Sender.send_now (jobcompd/producer.py)", "  Sender.send_now (produced on the reader's thread)"),
    ("ReportHandling._on_delivery (jobcompd/reports.py)", "  _on_delivery (report callbacks)"),
    ("ReportHandling._settle_locked (jobcompd/reports.py)", "  settling the reports (state included)"),
    ("Spool.mark_delivered (jobcompd/state/_spool.py)", "  State.mark_delivered (spool delete)"),
    ("Spool.spool_depth (jobcompd/state/_spool.py)", "State.spool_depth (count(*) on the spool)"),
)


@dataclass(frozen=True)
class Profile:
    """Collapsed stacks from one py-spy recording."""

    stacks: Counter[tuple[str, ...]]

    @classmethod
    def load(cls, path: Path) -> Profile:
        stacks: Counter[tuple[str, ...]] = Counter()
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                frames = tuple(_short(f) for f in stack.split(";"))
                if frames[-1] not in WAITS:
                    stacks[frames] += int(count)
        return cls(stacks)

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def self_time(self) -> Counter[str]:
        """Samples whose innermost Python frame is the function (its own code and the C it calls)."""
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            out[stack[-1]] += n
        return out

    def inclusive(self) -> Counter[str]:
        """Samples with the function anywhere on the stack."""
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            for frame in set(stack):
                out[frame] += n
        return out

    def stages(self) -> list[tuple[str, int]]:
        inclusive = self.inclusive()
        return [(label, inclusive[frame]) for frame, label in STAGES]

    def report(self, title: str, top: int = 15) -> list[str]:
        """Lines for the console: the stage breakdown, then the functions with the most self time."""
        total = self.samples
        if not total:
            return [f"{title}: no samples (py-spy could not attach?)"]
        out = [
            f"{title}: {total} samples at {RATE_HZ} Hz "
            "(busy threads only; all threads and the parse worker together)"
        ]
        out.append("  by pipeline stage (inclusive, % of samples):")
        for label, n in self.stages():
            out.append(f"    {100 * n / total:5.1f}%  {label}")
        out.append(f"  top {top} functions by self time (their own code and the C code they call):")
        for frame, n in self.self_time().most_common(top):
            out.append(f"    {100 * n / total:5.1f}%  {frame}")
        return out


def _short(frame: str) -> str:
    """``func (/long/path/jobcompd/state.py:123)`` → ``func (jobcompd/state.py)``."""
    if frame.startswith("__create_fn__.<locals>.__init__ (<string>"):
        return "__init__ of a dataclass (NewRecord, SpooledRecord, Delivery, DeliveryReport, ...)"
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for anchor in ("/jobcompd/", "/site-packages/", "/lib/python3"):
        if anchor in path:
            path = path[path.index(anchor) + 1 :]
            break
    return f"{m.group('func')} ({path})"


def record_command(py_spy: str, out: Path, argv: Sequence[str], *, timeout: float) -> int:
    """Run ``argv`` under py-spy until it exits; return its exit status."""
    with open(out.with_suffix(".log"), "wb") as log:
        proc = spawn(
            [py_spy, "record", "-s", "-r", str(RATE_HZ), "-F", "--format", "raw", "-o", str(out)]
            + ["--", *argv],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            proc.wait(timeout=timeout)
        finally:
            terminate(proc, sig=signal.SIGINT)
    return proc.returncode


class Attached:
    """py-spy attached to a running process until :meth:`stop` (SIGINT makes it write its file)."""

    def __init__(self, py_spy: str, pid: int, out: Path) -> None:
        self.out = out
        self._log = open(out.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in stop()
        self._proc = spawn(
            [
                py_spy,
                "record",
                "-s",
                "-r",
                str(RATE_HZ),
                "-F",
                "--format",
                "raw",
                "-o",
                str(out),
                "--pid",
                str(pid),
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def stop(self) -> None:
        terminate(self._proc, sig=signal.SIGINT, timeout=30)
        self._log.close()
