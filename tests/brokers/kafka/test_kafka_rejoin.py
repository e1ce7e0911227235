"""A periodic job's next tick on Kafka: a delayed record held twice moves once, and a consumer
whose group membership is stuck rejoining joins again with a new client (so that some member
reads the delay topic again and the next tick moves)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import TopicPartition

from repid import Connection, InMemoryBucketBroker, Job, KafkaMessageBroker, Queue
from repid.brokers.base import Delivery
from repid.brokers.kafka import group
from repid.brokers.kafka.consumer import KafkaConsumer
from repid.brokers.kafka.delays import DelayedRecords
from repid.brokers.kafka.offsets import PartitionOffsets
from repid.brokers.kafka.reading import read_topic
from repid.data import MessageCategory
from tests.conformance.specs import RUN_ID
from tests.conformance.specs.kafka import BOOTSTRAP
from tests.conformance.support import wait_until

pytestmark = pytest.mark.broker("kafka")

PREFIX = f"repid-{RUN_ID}-kr-"


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    broker = KafkaMessageBroker(
        BOOTSTRAP,
        topic_prefix=PREFIX,
        commit_interval=0.05,
        session_timeout=6.0,  # the smallest a broker accepts by default
        drain_timeout=0.0,
    )
    connection = Connection(
        broker, results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True)
    )
    await connection.connect()
    yield connection
    await connection.disconnect()


@pytest.fixture
async def queue(conn: Connection) -> AsyncIterator[Queue]:
    q = Queue(f"krq_{uuid4().hex[:10]}", _connection=conn)
    await q.declare()
    yield q
    await q.delete()


async def test_a_delayed_record_held_twice_is_moved_once(conn: Connection, queue: Queue) -> None:
    """Fetched again (a rebalance that gave the partition back): two timers, one send."""
    broker = conn.message_broker
    assert isinstance(broker, KafkaMessageBroker)
    job = Job("tick", queue=queue.name, deferred_by=timedelta(seconds=30), _connection=conn)
    await job.enqueue()
    # The real delayed record, read from the delay topic as a consumer reads it.
    (delivery,) = await read_topic(broker, queue.name, MessageCategory.DELAYED)
    sends: list[tuple[str, bytes]] = []
    sent = asyncio.Event()

    async def send(topic: str, value: bytes) -> None:
        await asyncio.sleep(0)  # the publish yields, as a real one does
        sends.append((topic, value))
        sent.set()

    def ready(part: PartitionOffsets, offset: int, d: Delivery) -> None:
        raise AssertionError("not a record of the queue's own topic")

    main, delayed = broker.topic(queue.name), broker.topic(queue.name, MessageCategory.DELAYED)
    records = DelayedRecords(queue.name, main, delayed, send, ready)
    part = PartitionOffsets(TopicPartition(delayed, 0))
    part.pending.append(0)
    now = time.time()
    due = now - 1.0  # the timers fire now
    records.hold(part, 0, delivery, b"value", due, now)
    records.hold(part, 0, delivery, b"value", due, now)  # fetched a second time
    mover = asyncio.create_task(records.run())
    try:
        await asyncio.wait_for(sent.wait(), 10)
        await wait_until(lambda: not records.held and not records._moving, "the move is over")
    finally:
        mover.cancel()
        await asyncio.gather(mover, return_exceptions=True)
    # Not due for 30 s: back to the delay topic (past HOLD_WINDOW would do the same), once.
    assert sends == [(delayed, b"value")]
    assert not part.pending  # finished: the commit may go past it


async def test_a_consumer_stuck_rejoining_joins_again_and_goes_on(
    conn: Connection, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = conn.message_broker
    assert isinstance(broker, KafkaMessageBroker)
    consumer = broker.get_consumer(queue.name)
    assert isinstance(consumer, KafkaConsumer)
    stuck = True
    real = group.rejoin_pending

    def pending(kafka: Any) -> bool:
        return stuck or real(kafka)

    await consumer.start()
    try:
        first = consumer._kafka
        assert first is not None
        monkeypatch.setattr(group, "rejoin_pending", pending)
        await wait_until(lambda: consumer._kafka is not first, "a new client", timeout=40)
        stuck = False
        await Job("tick", queue=queue.name, _connection=conn).enqueue()
        deliveries = await consumer.fetch(1, timeout=30)
        assert [d.key.topic for d in deliveries] == ["tick"]
        assert await broker.ack(deliveries[0])
    finally:
        await consumer.finish()
