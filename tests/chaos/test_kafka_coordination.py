"""Regression (found by C1 on Kafka): aiokafka's group coordination task dying must not leave
a consumer that never fetches again.

noida-db once answered a SyncGroup with empty assignment bytes; aiokafka failed to decode them,
its coordination task ended with the error and every later poll raised it, so the worker
logged "fetching ... failed; retrying" forever and ran nothing. The consumer now replaces its
aiokafka client when that task is dead and joins the group again: its unsettled deliveries go
back to the group (here, to itself).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from repid import Connection, KafkaMessageBroker, MessageCategory, Queue
from repid.brokers.kafka.consumer import KafkaConsumer
from tests.chaos._harness import BrokerSettings, Chaos

pytestmark = pytest.mark.broker("kafka")


@pytest.fixture
async def kafka(tmp_path: Any) -> AsyncIterator[Chaos]:
    async with Chaos.open(BrokerSettings.default("kafka"), tmp_path) as world:
        yield world


async def _fetch_one(consumer: KafkaConsumer, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = await consumer.fetch(1, 0.5)
        if batch:
            return batch[0].key.id_
    raise AssertionError(f"nothing delivered within {timeout}s")


async def test_consumer_joins_again_after_the_group_coordination_died(kafka: Chaos) -> None:
    conn: Connection = kafka.conn
    queue: Queue = kafka.queue
    broker = conn.message_broker
    assert isinstance(broker, KafkaMessageBroker)
    [job_id] = await kafka.enqueue(1)
    consumer = broker.get_consumer(queue.name, None, None, MessageCategory.NORMAL)
    assert isinstance(consumer, KafkaConsumer)
    await consumer.start()
    try:
        assert await _fetch_one(consumer, 30) == job_id  # taken, never settled
        first = consumer._kafka
        assert first is not None
        coordinator = first._coordinator

        async def undecodable(*args: object, **kwargs: object) -> None:
            raise ValueError("unpack requires a buffer of 2 bytes")  # what aiokafka raised

        coordinator._on_join_complete = undecodable
        coordinator.request_rejoin()
        # The unsettled delivery comes again, through a new client that joined the group.
        assert await _fetch_one(consumer, 40) == job_id
        assert consumer._kafka is not None
        assert consumer._kafka is not first
    finally:
        await consumer.finish()
