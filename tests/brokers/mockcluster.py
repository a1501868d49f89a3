"""librdkafka's mock Kafka cluster in a child process, with fault injection.

The parent side is :class:`MockCluster`. The child (``python -m tests.brokers.mockcluster``)
creates an ``rd_kafka_t`` with the librdkafka bundled in confluent-kafka, starts
``rd_kafka_mock_cluster_new()`` on it and serves a JSON-lines protocol:

* child -> parent, once: ``{"ok": true, "bootstrap": "127.0.0.1:p1,..."}``
* parent -> child: ``{"cmd": "<name>", ...arguments}``
* child -> parent, per command: ``{"ok": true, ...}`` or ``{"ok": false, "error": "...",
  "code": <rd_kafka_resp_err_t or null>}``

The child exits on ``{"cmd": "stop"}``, on end of stdin, and (Linux) when the thread that
started it dies (``PR_SET_PDEATHSIG``).

Running the cluster in its own process keeps its threads, sockets and any crash out of the
process under test, and lets tests kill it.

Mock cluster limits worth knowing: it refuses the admin CreateTopics request (use
:meth:`MockCluster.create_topic`); it keeps only 5 MB or 100,000 messages per partition (older
messages are trimmed, so large tests need more partitions); a consumer that asks for a topic
before it exists may keep seeing it empty, so create topics before any client uses them; and it
does not deduplicate retries of non-transactional idempotent producers (see
:class:`MockCluster`).
"""

from __future__ import annotations

import argparse
import ctypes
import enum
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Self

from tests.brokers import Broker

__all__ = ["ApiKey", "MockCluster", "MockClusterError", "MockRequest"]

_PROJECT_ROOT = Path(__file__).resolve().parents[2]


class ApiKey(enum.IntEnum):
    """Kafka protocol request types (ApiKey) commonly targeted by error injection."""

    PRODUCE = 0
    FETCH = 1
    LIST_OFFSETS = 2
    METADATA = 3
    OFFSET_COMMIT = 8
    OFFSET_FETCH = 9
    FIND_COORDINATOR = 10
    JOIN_GROUP = 11
    HEARTBEAT = 12
    LEAVE_GROUP = 13
    SYNC_GROUP = 14
    API_VERSIONS = 18
    CREATE_TOPICS = 19
    INIT_PRODUCER_ID = 22
    ADD_PARTITIONS_TO_TXN = 24
    END_TXN = 26


class MockClusterError(RuntimeError):
    """The mock cluster child failed to start, died, or refused a command.

    ``code`` is librdkafka's ``rd_kafka_resp_err_t`` when the refusal came with one.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class MockRequest:
    """One request the mock cluster received while request tracking was on."""

    broker_id: int
    api_key: int
    #: When the broker received it, in microseconds on librdkafka's monotonic clock.
    timestamp_us: int


class MockCluster(Broker):
    """librdkafka's mock cluster with ``brokers`` brokers (ids 1..brokers), in a child process.

    Brokers listen on loopback; :attr:`bootstrap` lists them all. Topics must be created with
    :meth:`create_topic` before clients use them. All fault-injection methods take effect
    before they return.

    The mock deduplicates producer retries only for *transactional* producers: a plain
    idempotent producer whose in-flight request was applied but not acknowledged (broker set
    down, ``_TRANSPORT`` error, long RTT) retries it and the mock stores it twice, where a real
    broker would drop the duplicate. Tests asserting exactly-once delivery across such faults
    must take that into account (e.g. flush before the fault).

    Start it from a thread that outlives it (normally the main thread): on Linux the child is
    killed when the thread that started it exits.
    """

    kind = "mock"

    def __init__(
        self,
        brokers: int = 3,
        *,
        startup_timeout: float = 20.0,
        command_timeout: float = 10.0,
    ) -> None:
        if brokers < 1:
            raise ValueError("a mock cluster needs at least one broker")
        self.brokers = brokers
        self.startup_timeout = startup_timeout
        self.command_timeout = command_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._replies: queue.Queue[str | None] = queue.Queue()
        self._reader: threading.Thread | None = None
        self._lock = threading.Lock()
        self._bootstrap: str | None = None
        self._tmpdir: str | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """Comma-separated ``host:port`` of every mock broker."""
        if self._bootstrap is None:
            raise RuntimeError("mock cluster is not running")
        return self._bootstrap

    @property
    def broker_ids(self) -> list[int]:
        """Ids of the cluster's brokers."""
        return list(range(1, self.brokers + 1))

    @property
    def pid(self) -> int | None:
        """Process id of the broker process, while it is running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """The child's stderr (librdkafka logs), while the cluster is running."""
        return Path(self._tmpdir, "mockcluster.log") if self._tmpdir else None

    def start(self) -> Self:
        """Start the child process and wait for the cluster's bootstrap servers."""
        if self._proc is not None:
            raise RuntimeError("mock cluster already started")
        self._tmpdir = tempfile.mkdtemp(prefix="jobcompd-mockcluster-")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_PROJECT_ROOT), env.get("PYTHONPATH")) if p
        )
        env["PYTHONUNBUFFERED"] = "1"
        try:
            with open(self._log_file(), "ab") as log:
                self._proc = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "tests.brokers.mockcluster",
                        "--brokers",
                        str(self.brokers),
                        "--parent-pid",
                        str(os.getpid()),
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=log,
                    text=True,
                    encoding="utf-8",
                    env=env,
                    cwd=self._tmpdir,
                )
            self._replies = queue.Queue()
            self._reader = threading.Thread(
                target=self._read_replies,
                args=(self._proc.stdout,),
                name=f"mockcluster-reader-{self._proc.pid}",
                daemon=True,
            )
            self._reader.start()
            hello = self._receive(self.startup_timeout, what="startup")
            self._bootstrap = str(hello["bootstrap"])
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Destroy the cluster and reap the child (killing it if it does not exit promptly)."""
        proc, self._proc = self._proc, None
        self._bootstrap = None
        if proc is not None:
            try:
                if proc.poll() is None and proc.stdin is not None:
                    proc.stdin.write(json.dumps({"cmd": "stop"}) + "\n")
                    proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                pass
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._reader is not None:
            self._reader.join(timeout=5)
            self._reader = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    # -- topics ------------------------------------------------------------------------------

    def create_topic(self, name: str, partitions: int = 1, replication_factor: int = 1) -> None:
        """Create a topic (the mock refuses admin CreateTopics). Leaders are spread over brokers.

        ``replication_factor`` may not exceed the number of brokers.
        """
        self._call(
            "topic_create", topic=name, partitions=partitions, replication_factor=replication_factor
        )

    def set_partition_leader(self, topic: str, partition: int, broker_id: int) -> None:
        """Make ``broker_id`` the leader of ``topic``/``partition`` (-1: no leader).

        Clients notice on their next metadata refresh. Creates the topic if it does not exist.
        """
        self._call("partition_set_leader", topic=topic, partition=partition, broker_id=broker_id)

    def set_partition_follower(self, topic: str, partition: int, broker_id: int) -> None:
        """Set the preferred replica (follower) consumers are told to fetch from."""
        self._call("partition_set_follower", topic=topic, partition=partition, broker_id=broker_id)

    def set_topic_error(self, topic: str, error_code: int) -> None:
        """Return ``error_code`` for ``topic`` in Metadata (and AddPartitionsToTxn) responses.

        Pass 0 to clear it.
        """
        self._call("topic_set_error", topic=topic, error_code=error_code)

    def set_coordinator(self, key_type: str, key: str, broker_id: int) -> None:
        """Pin the coordinator for a ``"group"`` or ``"transaction"`` id to ``broker_id``."""
        self._call("coordinator_set", key_type=key_type, key=key, broker_id=broker_id)

    # -- fault injection ---------------------------------------------------------------------

    def broker_down(self, broker_id: int) -> None:
        """Disconnect broker ``broker_id`` (-1: all) and refuse new connections.

        Partition leadership does not move.
        """
        self._call("broker_set_down", broker_id=broker_id)

    def broker_up(self, broker_id: int) -> None:
        """Let broker ``broker_id`` (-1: all) accept connections again."""
        self._call("broker_set_up", broker_id=broker_id)

    def set_rtt(self, broker_id: int, ms: int) -> None:
        """Delay every response of broker ``broker_id`` (-1: all) by ``ms`` milliseconds."""
        self._call("broker_set_rtt", broker_id=broker_id, rtt_ms=ms)

    def push_request_errors(self, api_key: int, errors: Sequence[int]) -> None:
        """Fail the next ``len(errors)`` requests of type ``api_key``, to any broker, in order.

        Each request gets the next error code from ``errors``; 0 lets one through.
        ``KafkaError._TRANSPORT`` (-195) makes the broker drop the connection instead.
        """
        self._call("push_request_errors", api_key=int(api_key), errors=[int(e) for e in errors])

    def push_broker_request_errors(
        self, broker_id: int, api_key: int, errors: Sequence[int | tuple[int, int]]
    ) -> None:
        """Like :meth:`push_request_errors` for one broker; these take precedence.

        Each entry is an error code, or ``(error_code, rtt_ms)`` to also delay that response.
        """
        pairs = [(int(e), 0) if isinstance(e, int) else (int(e[0]), int(e[1])) for e in errors]
        self._call(
            "broker_push_request_error_rtts",
            broker_id=broker_id,
            api_key=int(api_key),
            errors=pairs,
        )

    def clear_request_errors(self, api_key: int) -> None:
        """Drop the cluster-wide errors still pending for ``api_key``."""
        self._call("clear_request_errors", api_key=int(api_key))

    def broker_error_count(self, broker_id: int, api_key: int) -> int:
        """How many broker-specific injected errors for ``api_key`` are still pending."""
        reply = self._call("broker_error_stack_cnt", broker_id=broker_id, api_key=int(api_key))
        return int(reply["count"])

    def set_api_version(self, api_key: int, min_version: int, max_version: int) -> None:
        """Restrict the versions advertised for ``api_key``; -1/-1 disables the API entirely."""
        self._call(
            "set_apiversion",
            api_key=int(api_key),
            min_version=min_version,
            max_version=max_version,
        )

    # -- request tracking --------------------------------------------------------------------

    def start_request_tracking(self) -> None:
        """Start recording every request the brokers receive (see :meth:`requests`)."""
        self._call("start_request_tracking")

    def stop_request_tracking(self) -> None:
        """Stop recording requests; what was recorded stays."""
        self._call("stop_request_tracking")

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        self._call("clear_requests")

    def requests(self) -> list[MockRequest]:
        """The requests recorded since tracking started (or the last clear), oldest first."""
        reply = self._call("get_requests")
        return [MockRequest(*r) for r in reply["requests"]]

    # -- plumbing ----------------------------------------------------------------------------

    def _log_file(self) -> Path:
        assert self._tmpdir is not None
        return Path(self._tmpdir, "mockcluster.log")

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            data = self._log_file().read_bytes()
        except (AssertionError, OSError):
            return ""
        return data[-limit:].decode(errors="replace")

    def _read_replies(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self._replies.put(line)
        except (OSError, ValueError):
            pass
        finally:
            self._replies.put(None)

    def _receive(self, timeout: float, *, what: str) -> dict[str, Any]:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            raise MockClusterError(
                f"mock cluster gave no reply to {what} within {timeout}s; log:\n{self._log_tail()}"
            ) from None
        if line is None:
            rc = self._proc.poll() if self._proc is not None else None
            raise MockClusterError(
                f"mock cluster process exited (rc={rc}) during {what}; log:\n{self._log_tail()}"
            )
        reply: dict[str, Any] = json.loads(line)
        if not reply.get("ok"):
            raise MockClusterError(f"{what}: {reply.get('error')}", reply.get("code"))
        return reply

    def _call(self, cmd: str, **args: Any) -> dict[str, Any]:
        with self._lock:
            proc = self._proc
            if proc is None or proc.stdin is None:
                raise RuntimeError("mock cluster is not running")
            try:
                proc.stdin.write(json.dumps({"cmd": cmd, **args}) + "\n")
                proc.stdin.flush()
            except (BrokenPipeError, OSError) as exc:
                raise MockClusterError(
                    f"mock cluster process is gone ({exc}); log:\n{self._log_tail()}"
                ) from exc
            return self._receive(self.command_timeout, what=cmd)


# ================================================================================================
# Child process
# ================================================================================================

_PR_SET_PDEATHSIG = 1
_RD_KAFKA_PRODUCER = 0

_c_int32 = ctypes.c_int32
_c_int16 = ctypes.c_int16
_vp = ctypes.c_void_p


def _declare_mock_api(lib: ctypes.CDLL) -> None:
    """Declare the C signatures (from librdkafka's rdkafka.h / rdkafka_mock.h) we call."""
    sigs: dict[str, tuple[Any, list[Any]]] = {
        "rd_kafka_new": (_vp, [ctypes.c_int, _vp, ctypes.c_char_p, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [_vp]),
        "rd_kafka_mem_free": (None, [_vp, _vp]),
        "rd_kafka_err2str": (ctypes.c_char_p, [ctypes.c_int]),
        "rd_kafka_err2name": (ctypes.c_char_p, [ctypes.c_int]),
        "rd_kafka_mock_cluster_new": (_vp, [_vp, ctypes.c_int]),
        "rd_kafka_mock_cluster_destroy": (None, [_vp]),
        "rd_kafka_mock_cluster_bootstraps": (ctypes.c_char_p, [_vp]),
        "rd_kafka_mock_broker_set_down": (ctypes.c_int, [_vp, _c_int32]),
        "rd_kafka_mock_broker_set_up": (ctypes.c_int, [_vp, _c_int32]),
        "rd_kafka_mock_broker_set_rtt": (ctypes.c_int, [_vp, _c_int32, ctypes.c_int]),
        "rd_kafka_mock_push_request_errors_array": (
            None,
            [_vp, _c_int16, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int)],
        ),
        # Variadic: only the fixed part is declared; the (err, rtt_ms) pairs are passed as
        # explicit c_int, which is how C promotes them through "...".
        "rd_kafka_mock_broker_push_request_error_rtts": (
            ctypes.c_int,
            [_vp, _c_int32, _c_int16, ctypes.c_size_t],
        ),
        "rd_kafka_mock_clear_request_errors": (None, [_vp, _c_int16]),
        "rd_kafka_mock_broker_error_stack_cnt": (
            ctypes.c_int,
            [_vp, _c_int32, _c_int16, ctypes.POINTER(ctypes.c_size_t)],
        ),
        "rd_kafka_mock_topic_create": (
            ctypes.c_int,
            [_vp, ctypes.c_char_p, ctypes.c_int, ctypes.c_int],
        ),
        "rd_kafka_mock_topic_set_error": (None, [_vp, ctypes.c_char_p, ctypes.c_int]),
        "rd_kafka_mock_partition_set_leader": (
            ctypes.c_int,
            [_vp, ctypes.c_char_p, _c_int32, _c_int32],
        ),
        "rd_kafka_mock_partition_set_follower": (
            ctypes.c_int,
            [_vp, ctypes.c_char_p, _c_int32, _c_int32],
        ),
        "rd_kafka_mock_coordinator_set": (
            ctypes.c_int,
            [_vp, ctypes.c_char_p, ctypes.c_char_p, _c_int32],
        ),
        "rd_kafka_mock_set_apiversion": (ctypes.c_int, [_vp, _c_int16, _c_int16, _c_int16]),
        "rd_kafka_mock_start_request_tracking": (None, [_vp]),
        "rd_kafka_mock_stop_request_tracking": (None, [_vp]),
        "rd_kafka_mock_clear_requests": (None, [_vp]),
        "rd_kafka_mock_get_requests": (
            ctypes.POINTER(_vp),
            [_vp, ctypes.POINTER(ctypes.c_size_t)],
        ),
        "rd_kafka_mock_request_id": (_c_int32, [_vp]),
        "rd_kafka_mock_request_api_key": (_c_int16, [_vp]),
        "rd_kafka_mock_request_timestamp": (ctypes.c_int64, [_vp]),
        "rd_kafka_mock_request_destroy": (None, [_vp]),
    }
    for name, (restype, argtypes) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes


class _Refused(Exception):
    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class _Server:
    """The child side: owns the rd_kafka_t and the mock cluster, executes commands."""

    def __init__(self, lib: ctypes.CDLL, brokers: int) -> None:
        self.lib = lib
        conf = lib.rd_kafka_conf_new()
        errstr = ctypes.create_string_buffer(512)
        for key, value in (("client.id", "jobcompd-mockcluster"),):
            if lib.rd_kafka_conf_set(conf, key.encode(), value.encode(), errstr, 512) != 0:
                raise RuntimeError(f"rd_kafka_conf_set({key}): {errstr.value.decode()}")
        self.rk = lib.rd_kafka_new(_RD_KAFKA_PRODUCER, conf, errstr, ctypes.sizeof(errstr))
        if not self.rk:
            lib.rd_kafka_conf_destroy(conf)
            raise RuntimeError(f"rd_kafka_new: {errstr.value.decode()}")
        self.mcluster = lib.rd_kafka_mock_cluster_new(self.rk, brokers)
        if not self.mcluster:
            lib.rd_kafka_destroy(self.rk)
            raise RuntimeError("rd_kafka_mock_cluster_new failed")

    @property
    def bootstrap(self) -> str:
        raw: bytes = self.lib.rd_kafka_mock_cluster_bootstraps(self.mcluster)
        return raw.decode()

    def close(self) -> None:
        self.lib.rd_kafka_mock_cluster_destroy(self.mcluster)
        self.lib.rd_kafka_destroy(self.rk)

    def _check(self, err: int, what: str) -> None:
        if err != 0:
            name = self.lib.rd_kafka_err2name(err).decode()
            text = self.lib.rd_kafka_err2str(err).decode()
            raise _Refused(f"{what}: {name}: {text}", err)

    def handle(self, cmd: str, a: dict[str, Any]) -> dict[str, Any]:
        lib, mc = self.lib, self.mcluster
        if cmd == "broker_set_down":
            self._check(lib.rd_kafka_mock_broker_set_down(mc, a["broker_id"]), cmd)
        elif cmd == "broker_set_up":
            self._check(lib.rd_kafka_mock_broker_set_up(mc, a["broker_id"]), cmd)
        elif cmd == "broker_set_rtt":
            self._check(lib.rd_kafka_mock_broker_set_rtt(mc, a["broker_id"], a["rtt_ms"]), cmd)
        elif cmd == "push_request_errors":
            errors = a["errors"]
            arr = (ctypes.c_int * max(1, len(errors)))(*errors)
            lib.rd_kafka_mock_push_request_errors_array(mc, a["api_key"], len(errors), arr)
        elif cmd == "broker_push_request_error_rtts":
            # One call per entry keeps the variadic list short; each call appends to the stack.
            for err, rtt in a["errors"]:
                self._check(
                    lib.rd_kafka_mock_broker_push_request_error_rtts(
                        mc, a["broker_id"], a["api_key"], 1, ctypes.c_int(err), ctypes.c_int(rtt)
                    ),
                    cmd,
                )
        elif cmd == "clear_request_errors":
            lib.rd_kafka_mock_clear_request_errors(mc, a["api_key"])
        elif cmd == "broker_error_stack_cnt":
            cnt = ctypes.c_size_t(0)
            self._check(
                lib.rd_kafka_mock_broker_error_stack_cnt(
                    mc, a["broker_id"], a["api_key"], ctypes.byref(cnt)
                ),
                cmd,
            )
            return {"count": cnt.value}
        elif cmd == "topic_create":
            self._check(
                lib.rd_kafka_mock_topic_create(
                    mc, a["topic"].encode(), a["partitions"], a["replication_factor"]
                ),
                f"{cmd} {a['topic']!r}",
            )
        elif cmd == "topic_set_error":
            lib.rd_kafka_mock_topic_set_error(mc, a["topic"].encode(), a["error_code"])
        elif cmd == "partition_set_leader":
            self._check(
                lib.rd_kafka_mock_partition_set_leader(
                    mc, a["topic"].encode(), a["partition"], a["broker_id"]
                ),
                cmd,
            )
        elif cmd == "partition_set_follower":
            self._check(
                lib.rd_kafka_mock_partition_set_follower(
                    mc, a["topic"].encode(), a["partition"], a["broker_id"]
                ),
                cmd,
            )
        elif cmd == "coordinator_set":
            self._check(
                lib.rd_kafka_mock_coordinator_set(
                    mc, a["key_type"].encode(), a["key"].encode(), a["broker_id"]
                ),
                cmd,
            )
        elif cmd == "set_apiversion":
            self._check(
                lib.rd_kafka_mock_set_apiversion(
                    mc, a["api_key"], a["min_version"], a["max_version"]
                ),
                cmd,
            )
        elif cmd == "start_request_tracking":
            lib.rd_kafka_mock_start_request_tracking(mc)
        elif cmd == "stop_request_tracking":
            lib.rd_kafka_mock_stop_request_tracking(mc)
        elif cmd == "clear_requests":
            lib.rd_kafka_mock_clear_requests(mc)
        elif cmd == "get_requests":
            return {"requests": self._get_requests()}
        elif cmd == "ping":
            pass
        else:
            raise _Refused(f"unknown command {cmd!r}")
        return {}

    def _get_requests(self) -> list[tuple[int, int, int]]:
        lib = self.lib
        cnt = ctypes.c_size_t(0)
        arr = lib.rd_kafka_mock_get_requests(self.mcluster, ctypes.byref(cnt))
        out: list[tuple[int, int, int]] = []
        if not arr:
            return out
        try:
            for i in range(cnt.value):
                req = arr[i]
                out.append(
                    (
                        int(lib.rd_kafka_mock_request_id(req)),
                        int(lib.rd_kafka_mock_request_api_key(req)),
                        int(lib.rd_kafka_mock_request_timestamp(req)),
                    )
                )
                lib.rd_kafka_mock_request_destroy(req)
        finally:
            lib.rd_kafka_mem_free(None, ctypes.cast(arr, _vp))
        return out


def _die_with_parent(parent_pid: int) -> None:
    """Have the kernel SIGKILL us when the parent goes away (Linux only)."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    # The parent may have died before prctl() took effect.
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)


def _serve(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.brokers.mockcluster")
    parser.add_argument("--brokers", type=int, default=3)
    parser.add_argument("--parent-pid", type=int, default=0)
    args = parser.parse_args(argv)

    _die_with_parent(args.parent_pid)
    # The parent decides when we stop; a terminal Ctrl-C reaches it and it tears us down.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    # Replies go to a private copy of stdout; fd 1 becomes stderr so nothing else (C code
    # included) can interleave bytes into the protocol stream.
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    os.dup2(2, 1)

    from jobcompd import _librdkafka

    lib = _librdkafka.load()
    _declare_mock_api(lib)

    def reply(obj: dict[str, Any]) -> None:
        out.write(json.dumps(obj) + "\n")
        out.flush()

    try:
        server = _Server(lib, args.brokers)
    except Exception as exc:
        reply({"ok": False, "error": f"startup failed: {exc}", "code": None})
        return 1
    try:
        reply({"ok": True, "bootstrap": server.bootstrap})
        for line in sys.stdin:
            if not line.strip():
                continue
            try:
                request = json.loads(line)
                cmd = request.pop("cmd")
            except (ValueError, KeyError, AttributeError) as exc:
                reply({"ok": False, "error": f"bad request {line!r}: {exc}", "code": None})
                continue
            if cmd == "stop":
                reply({"ok": True})
                break
            try:
                result = server.handle(cmd, request)
            except _Refused as exc:
                reply({"ok": False, "error": str(exc), "code": exc.code})
            except (KeyError, TypeError, ctypes.ArgumentError) as exc:
                reply({"ok": False, "error": f"{cmd}: bad arguments: {exc!r}", "code": None})
            else:
                reply({"ok": True, **result})
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(_serve())
