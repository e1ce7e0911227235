"""`enqueue_and_wait` without a results store says which store to add, before sending anything."""

from __future__ import annotations

import pytest

from repid import Connection, InMemoryMessageBroker, Job, Queue
from repid.brokers.rabbitmq import RabbitMessageBroker
from repid.brokers.redis import RedisMessageBroker
from repid.errors import ConfigurationError


async def test_the_in_memory_broker_gets_its_own_bucket_broker() -> None:
    connection = Connection(InMemoryMessageBroker())
    await connection.connect()
    await Queue("default", _connection=connection).declare()
    job = Job("work", _connection=connection)
    with pytest.raises(ConfigurationError, match=r"InMemoryBucketBroker\(use_result_bucket=True\)"):
        await job.enqueue_and_wait(1)
    assert connection.message_broker.counts("default")["ready"] == 0  # nothing was sent
    await connection.disconnect()


@pytest.mark.parametrize(
    "broker",
    [
        RedisMessageBroker("redis://127.0.0.1:6379/0"),
        RabbitMessageBroker("amqp://guest:guest@127.0.0.1:5672/"),
    ],
    ids=["redis", "rabbitmq"],
)
async def test_network_brokers_are_told_about_redis_bucket_broker(broker: object) -> None:
    job = Job("work", _connection=Connection(broker))  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match=r"results_bucket_broker=RedisBucketBroker\("):
        await job.enqueue_and_wait(1)
