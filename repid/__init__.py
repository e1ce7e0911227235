"""repid: a broker-agnostic actor/router messaging framework for asyncio.

Producers `await Job(...).enqueue()`; a `Worker` routes each message by name to an
`@router.actor` function and runs it with timeouts, retries, priorities and graceful shutdown.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from repid.brokers.base import (
    BrokerCapabilities,
    BucketBrokerT,
    ConsumerT,
    Delivery,
    MessageBrokerT,
)
from repid.connection import Connection
from repid.converter import BasicConverter, ConverterT, DefaultConverter, PydanticConverter
from repid.data import (
    ArgsBucket,
    BucketT,
    DeadLetterInfo,
    DeadLetterReason,
    MessageCategory,
    Parameters,
    ParametersT,
    PrioritiesT,
    ResultBucket,
    ResultBucketT,
    RoutingKey,
    RoutingKeyT,
)
from repid.dependencies import Depends
from repid.errors import (
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    ConsumerClosedError,
    DecodeError,
    MessageTooLargeError,
    QueueNotDeclaredError,
    RepidError,
    SerializationError,
)
from repid.job import Job
from repid.lifecycle import (
    CancelOutcome,
    EventKind,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    JobNotFoundError,
    RateLimit,
    Snooze,
)
from repid.main import Repid
from repid.message import Message, MessageDependency
from repid.queue import Queue
from repid.retry_policy import RetryPolicyT, default_retry_policy_factory
from repid.router import Router, RouterDefaults
from repid.serializer import Config, SerializerT, default_serializer
from repid.worker import Runner, Worker

if TYPE_CHECKING:  # imported on first use (see `__getattr__`): a worker of another broker
    from repid.brokers.memory.broker import InMemoryBucketBroker, InMemoryMessageBroker
    from repid.brokers.sqlite import SqliteBucketBroker, SqliteMessageBroker
    from repid.cli.pool import WorkerPool
    from repid.testing import GetEventLogT, GetInMemoryQueueT, GetMockedActorT

from repid._version import __version__ as __version__

logger = logging.getLogger("repid")
logger.addHandler(logging.NullHandler())


__all__ = [
    "ArgsBucket",
    "BasicConverter",
    "BrokerCapabilities",
    "BrokerError",
    "BrokerUnavailableError",
    "BucketBrokerT",
    "BucketT",
    "CancelOutcome",
    "Config",
    "ConfigurationError",
    "Connection",
    "ConsumerClosedError",
    "ConsumerT",
    "ConverterT",
    "DeadLetterInfo",
    "DeadLetterReason",
    "DecodeError",
    "DefaultConverter",
    "Delivery",
    "Depends",
    "EventKind",
    "GetEventLogT",
    "GetInMemoryQueueT",
    "GetMockedActorT",
    "HealthCheckServer",
    "HealthCheckServerSettings",
    "HealthCheckStatus",
    "InMemoryBucketBroker",
    "InMemoryMessageBroker",
    "Job",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobNotFoundError",
    "Message",
    "MessageBrokerT",
    "MessageCategory",
    "MessageDependency",
    "MessageTooLargeError",
    "Parameters",
    "ParametersT",
    "PrioritiesT",
    "PydanticConverter",
    "Queue",
    "QueueNotDeclaredError",
    "RateLimit",
    "Repid",
    "RepidError",
    "ResultBucket",
    "ResultBucketT",
    "RetryPolicyT",
    "Router",
    "RouterDefaults",
    "RoutingKey",
    "RoutingKeyT",
    "Runner",
    "SerializationError",
    "SerializerT",
    "Snooze",
    "SqliteBucketBroker",
    "SqliteMessageBroker",
    "Worker",
    "WorkerPool",
    "default_retry_policy_factory",
    "default_serializer",
    "logger",
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
    "PostgresMessageBroker": "repid.brokers.postgres",
    "PostgresBucketBroker": "repid.brokers.postgres",
    "NatsMessageBroker": "repid.brokers.nats",
    "NatsBucketBroker": "repid.brokers.nats",
    "HealthCheckServer": "repid.health_check_server",
    "HealthCheckServerSettings": "repid.health_check_server",
    "HealthCheckStatus": "repid.health_check_server",
    "GetEventLogT": "repid.testing",
    "GetInMemoryQueueT": "repid.testing",
    "GetMockedActorT": "repid.testing",
    "WorkerPool": "repid.cli.pool",
}


def __getattr__(name: str) -> Any:
    """Import broker classes lazily: their client libraries are optional extras, and a worker
    imports only the broker it uses."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'repid' has no attribute {name!r}")
    import importlib

    try:
        return getattr(importlib.import_module(module), name)
    except ModuleNotFoundError as exc:
        extras = {"redis", "rabbitmq", "kafka", "postgres", "nats"}
        extra = module.rsplit(".", 1)[-1]
        extra = extra if extra in extras else "all"
        raise ImportError(f"{name} needs an extra: pip install 'repid[{extra}]' ({exc})") from exc
