"""The Kafka broker's connection keywords: `connect_timeout`, `operation_timeout`,
`reconnect_backoff`, and `timeout` (before 2.0) kept as an alias of both timeouts."""

from __future__ import annotations

import socket
import time

import pytest

from repid import BrokerUnavailableError, KafkaMessageBroker
from repid.errors import ConfigurationError

UNUSED = "127.0.0.1:1"


def test_defaults_are_the_ones_before_the_policy() -> None:
    broker = KafkaMessageBroker(UNUSED)
    assert (broker.connect_timeout, broker.operation_timeout, broker.reconnect_backoff) == (
        10.0,
        10.0,
        0.1,
    )
    assert broker.timeout == 10.0
    assert broker.client_kwargs()["retry_backoff_ms"] == 100  # aiokafka's own default


def test_timeout_is_an_alias_of_both_timeouts() -> None:
    broker = KafkaMessageBroker(UNUSED, timeout=3.0)
    assert (broker.connect_timeout, broker.operation_timeout) == (3.0, 3.0)
    assert broker.timeout == 3.0
    assert broker._publisher.timeout == 3.0  # what bounds an enqueue
    assert broker._admin.timeout == 3.0


def test_the_new_keywords_win_over_the_alias() -> None:
    broker = KafkaMessageBroker(UNUSED, timeout=3.0, connect_timeout=1.5)
    assert (broker.connect_timeout, broker.operation_timeout) == (1.5, 3.0)
    broker = KafkaMessageBroker(UNUSED, operation_timeout=4.0, reconnect_backoff=0.5)
    assert (broker.connect_timeout, broker.operation_timeout) == (10.0, 4.0)
    assert broker.client_kwargs()["retry_backoff_ms"] == 500


def test_client_options_override_the_backoff() -> None:
    broker = KafkaMessageBroker(UNUSED, client_options={"retry_backoff_ms": 7})
    assert broker.client_kwargs()["retry_backoff_ms"] == 7


@pytest.mark.parametrize(
    "options",
    [{"timeout": 0}, {"connect_timeout": -1}, {"operation_timeout": 0}, {"reconnect_backoff": -1}],
)
def test_invalid_values_are_configuration_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        KafkaMessageBroker(UNUSED, **options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connect_timeout_bounds_connect() -> None:
    broker = KafkaMessageBroker(f"127.0.0.1:{_free_port()}", connect_timeout=0.5, timeout=30)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match=r"Kafka at .* is unreachable: connecting"):
        await broker.connect()
    assert time.monotonic() - started < 10
