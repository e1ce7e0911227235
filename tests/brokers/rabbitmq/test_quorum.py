"""Quorum queues: the layout on the server, the delivery-limit backstop, delayed priorities."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from repid import Connection, Job, MessageCategory, PrioritiesT, Queue, Router, Worker
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from repid.data import RoutingKey
from tests.conformance.specs.rabbitmq import DSN
from tests.conformance.specs.rabbitmq_quorum import PREFIX
from tests.conformance.support import browse, running, wait

pytestmark = pytest.mark.broker("rabbitmq")


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    broker = RabbitMessageBroker(DSN, prefix=PREFIX, timeout=5.0, queue_type="quorum")
    connection = Connection(broker)
    await connection.connect()
    yield connection
    await connection.disconnect()


@pytest.fixture
async def queue(conn: Connection) -> AsyncIterator[Queue]:
    q = Queue(f"qq_{uuid4().hex[:10]}", _connection=conn)
    await q.declare()
    yield q
    await q.delete()


def test_queue_type_is_checked() -> None:
    with pytest.raises(ValueError, match="queue_type"):
        RabbitMessageBroker(queue_type="stream")
    with pytest.raises(ValueError, match="delivery_limit"):
        RabbitMessageBroker(queue_type="quorum", delivery_limit=0)
    broker = RabbitMessageBroker("amqp://u:hunter2@h/", queue_type="quorum")
    assert "hunter2" not in repr(broker)
    assert "quorum" in repr(broker)


async def test_every_queue_is_a_quorum_queue_one_per_priority(
    conn: Connection, queue: Queue
) -> None:
    await Job("later", queue=queue.name, _connection=conn, deferred_by=timedelta(hours=1)).enqueue()
    ctl = shutil.which("rabbitmqctl")
    assert ctl is not None, "rabbitmqctl is needed to read the queue types"
    proc = await asyncio.create_subprocess_exec(
        *(ctl, "list_queues", "-q", "--formatter", "json", "name", "type", "arguments"),
        stdout=subprocess.PIPE,
    )
    raw, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0
    out = raw.decode()
    ours = {q["name"]: q for q in json.loads(out) if q["name"].startswith(PREFIX + queue.name)}
    base = PREFIX + queue.name
    assert {base, base + ":high", base + ":low", base + ":dead"} <= set(ours)
    assert any(":delay:" in name for name in ours)
    assert {q["type"] for q in ours.values()} == {"quorum"}
    for name in (base, base + ":high", base + ":low"):
        args = {key: value for key, _, value in ours[name]["arguments"]}
        assert args["x-delivery-limit"] == 20
        assert args["x-dead-letter-strategy"] == "at-least-once"
        assert "x-max-priority" not in args


async def test_delivery_limit_dead_letters_a_message_that_keeps_coming_back() -> None:
    broker = RabbitMessageBroker(
        DSN, prefix=PREFIX, timeout=5.0, queue_type="quorum", delivery_limit=2
    )
    await broker.connect()
    queue = Queue(f"qq_{uuid4().hex[:10]}", _connection=Connection(broker))
    await broker.queue_declare(queue.name)
    try:
        await broker.enqueue(RoutingKey("poison", "crash", queue.name, 1), '{"x":1}')
        deliveries = 0
        while True:  # a worker that dies holding it, each time it gets it
            consumer = broker.get_consumer(queue.name, None, 1)
            await consumer.start()
            try:
                delivery = await asyncio.wait_for(consumer.consume(), 3)
            except TimeoutError:
                break  # RabbitMQ no longer delivers it
            finally:
                await consumer.finish()  # closed unsettled: RabbitMQ counts a delivery
            assert delivery.key.id_ == "poison"
            deliveries += 1
            assert deliveries <= 3, "delivered again past the limit"
        # Returned by a nack: dead after the 2nd delivery; by a closed channel: after the 3rd.
        assert deliveries in (2, 3)
        deadline = time.monotonic() + 10
        while (await broker.counts(queue.name))["dead"] != 1:
            assert time.monotonic() < deadline, "the poison message was not dead-lettered"
            await asyncio.sleep(0.02)
        dead = await browse(queue, MessageCategory.DEAD)
        assert [m.key.id_ for m in dead] == ["poison"]
        assert await browse(queue) == []
        dead_part = queue.get_messages(category=MessageCategory.DEAD, stop_when_empty=True)
        async with contextlib.aclosing(dead_part) as it:
            async for message in it:
                await message.retry(revive=True)  # back to work, as any dead letter
        assert [m.key.id_ for m in await browse(queue)] == ["poison"]
        assert await browse(queue, MessageCategory.DEAD) == []
    finally:
        await broker.queue_delete(queue.name)
        await broker.disconnect()


async def test_priorities_end_to_end(conn: Connection, queue: Queue) -> None:
    router = Router()
    order: list[str] = []

    @router.actor(queue=queue.name)
    async def record(tag: str) -> None:
        order.append(tag)

    plan = [PrioritiesT.LOW, PrioritiesT.MEDIUM, PrioritiesT.HIGH] * 10
    for priority in plan:
        await Job(
            "record", queue=queue.name, priority=priority, args={"tag": priority.name},
            _connection=conn,
        ).enqueue()  # fmt: skip
    worker = Worker([router], tasks_limit=1, messages_limit=len(plan), handle_signals=[],
                    _connection=conn)  # fmt: skip
    await asyncio.wait_for(worker.run(), 20)
    assert order == ["HIGH"] * 10 + ["MEDIUM"] * 10 + ["LOW"] * 10


async def test_deferred_jobs_of_each_priority_run_once_never_early(
    conn: Connection, queue: Queue
) -> None:
    """A delay queue dead-letters into the MEDIUM queue; HIGH and LOW jobs are sent on to their
    own queue from there, and each runs once."""
    router = Router()
    ran: dict[str, float] = {}
    done = asyncio.Event()

    @router.actor(queue=queue.name)
    async def record(tag: str) -> None:
        assert tag not in ran, f"{tag} ran twice"
        ran[tag] = time.time()
        if len(ran) == 3:
            done.set()

    due = datetime.now(tz=UTC) + timedelta(seconds=0.5)
    for tag, priority in (
        ("h", PrioritiesT.HIGH),
        ("m", PrioritiesT.MEDIUM),
        ("l", PrioritiesT.LOW),
    ):
        await Job(
            "record", queue=queue.name, priority=priority, args={"tag": tag},
            deferred_until=due, _connection=conn,
        ).enqueue()  # fmt: skip
    async with running(Worker([router], handle_signals=[], _connection=conn)):
        await wait(done, "three deferred jobs", timeout=10)
    assert sorted(ran) == ["h", "l", "m"]
    assert min(ran.values()) >= due.timestamp() - 0.01
    for category in MessageCategory:
        assert await browse(queue, category) == []


def test_a_zero_or_negative_interval_is_written_to_the_wire() -> None:
    """A recurring schedule with no next run survives a re-encode (a forwarded copy), so the
    worker still refuses it instead of running the copy as a one-shot job."""
    from repid.data import DelayProperties, Parameters

    for seconds in (0.0, -5.0):
        params = Parameters(delay=DelayProperties(defer_by=timedelta(seconds=seconds)))
        encoded = params.encode()
        assert encoded["d"] == [None, seconds, None, None]
        assert Parameters.decode(encoded).delay.defer_by == timedelta(seconds=seconds)
    assert "d" not in Parameters().encode()


async def test_a_recurring_job_without_next_run_in_another_band_is_dead_lettered(
    conn: Connection, queue: Queue
) -> None:
    """Published into the HIGH queue with a MEDIUM envelope, the message is forwarded to the
    MEDIUM queue; the copy keeps its zero interval: it runs once, then `schedule_error`."""
    import aio_pika
    from pydantic_core import to_json

    from repid.codec import encode_message
    from repid.data import DeadLetterReason, DelayProperties, Parameters

    body = encode_message(
        RoutingKey("zero_interval", "tick", queue.name, 1),
        "{}",
        Parameters(delay=DelayProperties(defer_by=timedelta(0))),
    )
    assert b'"d":[null,0.0,null,null]' in to_json(json.loads(body))
    high = conn.message_broker._sources(queue.name)[0]
    assert high.endswith(":high")
    connection = await aio_pika.connect(DSN)
    try:
        channel = await connection.channel(publisher_confirms=True)
        await channel.default_exchange.publish(
            aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT),
            routing_key=high,
        )
    finally:
        await connection.close()
    router = Router()
    runs: list[int] = []

    @router.actor(queue=queue.name)
    async def tick() -> None:
        runs.append(1)

    async with running(Worker([router], handle_signals=[], _connection=conn)):
        deadline = time.monotonic() + 20
        while not (dead := await browse(queue, MessageCategory.DEAD)):
            assert time.monotonic() < deadline, f"not dead-lettered; runs: {len(runs)}"
            await asyncio.sleep(0.05)
    assert [m.key.id_ for m in dead] == ["zero_interval"]
    assert dead[0].dead_letter is not None
    assert dead[0].dead_letter.reason == DeadLetterReason.SCHEDULE_ERROR.value
    assert runs == [1]
    assert await browse(queue) == []
