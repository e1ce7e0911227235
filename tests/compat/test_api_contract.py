"""API-1.6.md, statement by statement, for what the other compat modules do not cover: the
public names, signatures and defaults a 1.6 code base uses.
"""

from __future__ import annotations

import signal
from datetime import timedelta

import pytest

import repid
from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    Queue,
    Repid,
    Router,
    RouterDefaults,
    Worker,
    default_retry_policy_factory,
)

TOP_LEVEL = [
    "Repid",
    "Connection",
    "Job",
    "Queue",
    "Message",
    "MessageCategory",
    "Router",
    "RouterDefaults",
    "Worker",
    "PrioritiesT",
    "RetryPolicyT",
    "default_retry_policy_factory",
    "SerializerT",
    "default_serializer",
    "Config",
    "BasicConverter",
    "DefaultConverter",
    "PydanticConverter",
    "Depends",
    "MessageDependency",
    "HealthCheckServer",
    "HealthCheckServerSettings",
    "HealthCheckStatus",
    "logger",
    "InMemoryMessageBroker",
    "InMemoryBucketBroker",
    "RedisMessageBroker",
    "RedisBucketBroker",
    "RabbitMessageBroker",
    "KafkaMessageBroker",
    "MessageBrokerT",
    "ConsumerT",
    "BucketBrokerT",
    "RoutingKeyT",
    "ParametersT",
    "BucketT",
    "ResultBucketT",
    "GetEventLogT",
    "GetInMemoryQueueT",
    "GetMockedActorT",
]


@pytest.mark.parametrize("name", TOP_LEVEL)
def test_top_level_name(name: str) -> None:
    assert getattr(repid, name) is not None


async def test_magic_connect_and_disconnect() -> None:
    app = Repid(Connection(InMemoryMessageBroker()))
    conn = await app.magic_connect()
    try:
        assert Repid.get_magic_connection() is conn
        assert conn.is_open
    finally:
        await app.magic_disconnect()
    assert not conn.is_open
    with pytest.raises(ValueError, match=r"Default connection isn't set\."):
        Repid.get_magic_connection()


def test_results_bucket_broker_needs_use_result_bucket() -> None:
    with pytest.raises(ValueError, match="use_result_bucket=True"):
        Connection(InMemoryMessageBroker(), results_bucket_broker=InMemoryBucketBroker())


@pytest.mark.repid
def test_job_queue_is_always_a_queue() -> None:
    assert Job("a").queue == Queue("default")
    assert isinstance(Job("a", queue="emails").queue, Queue)
    with pytest.raises(ValueError):
        Job("a", retries=-1)


async def test_enqueue_into_an_undeclared_in_memory_queue_names_it() -> None:
    app = Repid(Connection(InMemoryMessageBroker()))
    async with app.magic(auto_disconnect=True):
        with pytest.raises(KeyError, match="not_there"):
            await Job("a", queue="not_there").enqueue()


async def test_result_without_a_results_broker_raises() -> None:
    app = Repid(Connection(InMemoryMessageBroker()))
    async with app.magic(auto_disconnect=True):
        with pytest.raises(ValueError):
            await Job("a").result


def test_default_retry_policy() -> None:
    policy = default_retry_policy_factory()
    for n in (1, 2, 3, 10, 20):
        expected = max(10, min(5 * 2 ** min(n, 15), 86400))
        assert policy(n) == timedelta(seconds=expected)


def test_router_and_worker() -> None:
    r = Router(defaults=RouterDefaults(queue="emails"))

    def send() -> None:
        return None

    assert r.actor(send) is send
    assert r.actor(name="other")(send) is send
    assert set(r.actors) == {"send", "other"}
    w = Worker(routers=[r])
    assert isinstance(w, Router)
    assert set(w.actors) == {"send", "other"}
    assert list(w.handle_signals) == [signal.SIGINT, signal.SIGTERM]
