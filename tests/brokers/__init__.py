"""Real Kafka-protocol brokers for the test suite, listening on loopback.

Two implementations share the :class:`Broker` interface:

* :class:`~tests.brokers.mockcluster.MockCluster` -- librdkafka's mock cluster, run in a child
  process and driven through ctypes; it has fault injection (brokers down, latency, request
  errors).
* :class:`~tests.brokers.tansu.TansuBroker` -- the independently written ``tansu`` broker,
  with in-memory storage.

Read topics back with :func:`~tests.brokers.readback.consume_all`.
"""

from __future__ import annotations

import abc
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Self

if TYPE_CHECKING:
    from tests.brokers.mockcluster import MockCluster
    from tests.brokers.readback import consume_all
    from tests.brokers.tansu import TansuBroker

__all__ = ["Broker", "MockCluster", "TansuBroker", "consume_all", "free_port"]


class Broker(abc.ABC):
    """A running Kafka-protocol broker (or cluster) that a test talks to over TCP.

    Use as a context manager, or call :meth:`start` and :meth:`stop` (always stop it, even on
    failure: it owns a child process).
    """

    #: Short name of the implementation: ``"mock"`` or ``"tansu"``.
    kind: ClassVar[str]

    @property
    @abc.abstractmethod
    def bootstrap(self) -> str:
        """The ``bootstrap.servers`` string (``"host:port[,host:port...]"``) of the running broker."""

    @abc.abstractmethod
    def start(self) -> Self:
        """Start the broker and wait until it answers Kafka requests; return ``self``."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop the broker and reap its process. Safe to call more than once."""

    @abc.abstractmethod
    def create_topic(self, name: str, partitions: int = 1) -> None:
        """Create topic ``name`` with ``partitions`` partitions and wait until it is usable."""

    def client_config(self, **overrides: Any) -> dict[str, Any]:
        """A confluent-kafka client configuration pointing at this broker, plus ``overrides``.

        Keys use librdkafka's dotted names; pass them as ``**{"acks": "all"}`` when they contain
        dots.
        """
        return {"bootstrap.servers": self.bootstrap, **overrides}

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        try:
            where = self.bootstrap
        except RuntimeError:
            where = "not running"
        return f"<{type(self).__name__} {where}>"


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that was free a moment ago.

    Another process may take it before the caller binds it; callers that start a server on it
    should retry with a new port if the bind fails.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def __getattr__(name: str) -> Any:
    # Imported lazily: ``python -m tests.brokers.mockcluster`` imports this package first, and an
    # eager import of the submodule here would make runpy execute it twice.
    if name == "MockCluster":
        from tests.brokers.mockcluster import MockCluster

        return MockCluster
    if name == "TansuBroker":
        from tests.brokers.tansu import TansuBroker

        return TansuBroker
    if name == "consume_all":
        from tests.brokers.readback import consume_all

        return consume_all
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
