"""The broker's connection keywords: `connect_timeout`, `operation_timeout`, `reconnect_backoff`,
with the older `timeout` and `reconnect_interval` kept as aliases; no password in messages."""

from __future__ import annotations

import pytest

from repid import BrokerUnavailableError
from repid.brokers.base import ConnectionPolicy
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from repid.errors import ConfigurationError

pytestmark = pytest.mark.broker("rabbitmq")


def test_defaults_are_the_ones_from_before_the_policy() -> None:
    broker = RabbitMessageBroker()
    assert broker.connection_policy == ConnectionPolicy(10.0, 10.0, 1.0)
    assert (broker.timeout, broker.reconnect_interval) == (10.0, 1.0)


def test_the_new_keywords() -> None:
    broker = RabbitMessageBroker(connect_timeout=2.0, operation_timeout=3.0, reconnect_backoff=0.1)
    assert broker.connection_policy == ConnectionPolicy(2.0, 3.0, 0.1)


def test_timeout_and_reconnect_interval_are_aliases() -> None:
    broker = RabbitMessageBroker(timeout=4.0, reconnect_interval=0.2)
    assert broker.connection_policy == ConnectionPolicy(4.0, 4.0, 0.2)
    assert (broker.timeout, broker.reconnect_interval) == (4.0, 0.2)


def test_a_new_keyword_wins_over_its_alias() -> None:
    broker = RabbitMessageBroker(timeout=4.0, connect_timeout=1.0, reconnect_interval=0.2,
                                 reconnect_backoff=0.3)  # fmt: skip
    assert broker.connection_policy == ConnectionPolicy(1.0, 4.0, 0.3)


@pytest.mark.parametrize(
    "options",
    [
        {"timeout": 0},
        {"connect_timeout": -1.0},
        {"operation_timeout": 0.0},
        {"reconnect_interval": -0.5},
    ],
)
def test_invalid_values_are_configuration_errors(options: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        RabbitMessageBroker(**options)  # type: ignore[arg-type]


async def test_the_password_never_shows() -> None:
    broker = RabbitMessageBroker("amqp://guest:s3cr3t-pw@127.0.0.1:1/", connect_timeout=1.0)
    assert "s3cr3t-pw" not in repr(broker)
    with pytest.raises(BrokerUnavailableError) as caught:
        await broker.connect()
    assert "s3cr3t-pw" not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)
