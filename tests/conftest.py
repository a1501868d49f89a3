"""Shared pytest fixtures: real Kafka-protocol brokers on loopback (see tests/brokers)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.brokers import Broker
from tests.brokers.mockcluster import MockCluster
from tests.brokers.tansu import TansuBroker

BROKER_KINDS = ["mock", "tansu"]


@pytest.fixture
def mock_cluster() -> Iterator[MockCluster]:
    """A fresh librdkafka mock cluster with 3 brokers (ids 1-3), with fault injection."""
    with MockCluster(brokers=3) as cluster:
        yield cluster


@pytest.fixture
def tansu_broker() -> Iterator[TansuBroker]:
    """A fresh, empty tansu broker with in-memory storage.

    Fails (does not skip) when tansu cannot run here.
    """
    with TansuBroker() as broker:
        yield broker


@pytest.fixture(params=BROKER_KINDS)
def broker(request: pytest.FixtureRequest) -> Broker:
    """Each broker kind in turn (``mock``, then ``tansu``): for tests that must pass on both."""
    fixture_name = {"mock": "mock_cluster", "tansu": "tansu_broker"}[request.param]
    started: Broker = request.getfixturevalue(fixture_name)
    return started
