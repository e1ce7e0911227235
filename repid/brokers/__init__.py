"""Message and bucket brokers. Network brokers import lazily: their client library is an extra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from repid.brokers.base import (
    BrokerCapabilities,
    BucketBrokerT,
    ConsumerT,
    Delivery,
    MessageBrokerT,
    OutgoingMessage,
)
from repid.errors import ConsumerClosedError

if TYPE_CHECKING:  # imported on first use, like the network brokers
    from repid.brokers.memory.broker import InMemoryBucketBroker, InMemoryMessageBroker

__all__ = [
    "BrokerCapabilities",
    "BucketBrokerT",
    "ConsumerClosedError",
    "ConsumerT",
    "Delivery",
    "InMemoryBucketBroker",
    "InMemoryMessageBroker",
    "MessageBrokerT",
    "OutgoingMessage",
]

_LAZY = {
    "InMemoryMessageBroker": "repid.brokers.memory",
    "InMemoryBucketBroker": "repid.brokers.memory",
    "RedisMessageBroker": "repid.brokers.redis",
    "RedisBucketBroker": "repid.brokers.redis",
    "RedisSharedState": "repid.state.redis",
    "RabbitMessageBroker": "repid.brokers.rabbitmq",
    "KafkaMessageBroker": "repid.brokers.kafka",
    "SqliteMessageBroker": "repid.brokers.sqlite",
    "SqliteBucketBroker": "repid.brokers.sqlite",
    "NatsMessageBroker": "repid.brokers.nats",
    "NatsBucketBroker": "repid.brokers.nats",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'repid.brokers' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
