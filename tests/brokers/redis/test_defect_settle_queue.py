"""Issue 26, defect 5: a delivery is settled against the stream it was read from, whatever queue
its envelope names, and queue names taken from messages or callers do not grow caches.

Before the fix the broker settled against `key.queue` from the envelope: an envelope naming
another queue failed its ack with NOGROUP (the entry stayed pending and ran again every lease),
and every distinct name added entries to the key and enqueue-head caches.
"""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio

from repid import Connection, MessageCategory, QueueNotDeclaredError, Router, Worker
from repid.brokers.redis.broker import _CACHED_QUEUES
from repid.codec import encode_message
from repid.data import Parameters, RoutingKey
from repid.queue import Queue
from tests.conformance.specs.redis import DSN

DEADLINE = 20.0


async def _queue(conn: Connection) -> Queue:
    queue = Queue(f"q_{uuid4().hex[:10]}", _connection=conn)
    await queue.declare()
    return queue


async def _publish_raw(conn: Connection, queue: Queue, envelopes: list[bytes]) -> None:
    """XADD envelopes straight into the queue's MEDIUM stream, as another producer would."""
    stream = conn.message_broker.keys(queue.name)[1]
    client = redis.asyncio.Redis.from_url(DSN)
    try:
        async with client.pipeline(transaction=False) as pipe:
            for envelope in envelopes:
                pipe.xadd(stream, {"m": envelope})
            await pipe.execute()
    finally:
        await client.aclose()


async def _pending(conn: Connection, queue: Queue) -> int:
    client = redis.asyncio.Redis.from_url(DSN)
    try:
        total = 0
        for stream in conn.message_broker.keys(queue.name)[:3]:
            summary = await client.xpending(stream, "repid")
            total += summary["pending"]
        return total
    finally:
        await client.aclose()


async def _dead(queue: Queue) -> list[Any]:
    out = []
    async for message in queue.get_messages(category=MessageCategory.DEAD, stop_when_empty=True):
        out.append(message)
    return out


def _foreign(id_: str, topic: str, named_queue: str) -> bytes:
    return encode_message(RoutingKey(id_, topic, named_queue), "{}", Parameters())


async def test_a_message_naming_another_queue_is_acked_where_it_was_read(
    connect: Any, prefix: str
) -> None:
    conn = await connect(lease_duration=1.0)
    queue = await _queue(conn)
    other = f"not-{queue.name}"
    await _publish_raw(conn, queue, [_foreign("d5-ack", "job", other)])
    router = Router()
    runs: list[str] = []

    @router.actor(queue=queue.name)
    async def job() -> None:
        runs.append("run")

    worker = Worker([router], messages_limit=1, handle_signals=[], _connection=conn)
    await asyncio.wait_for(worker.run(), DEADLINE)

    assert runs == ["run"]
    assert await _pending(conn, queue) == 0, "the ack did not reach the stream it came from"
    assert await conn.message_broker.counts(queue.name) == {
        "ready": 0,
        "delayed": 0,
        "in_flight": 0,
        "dead": 0,
    }
    client = redis.asyncio.Redis.from_url(DSN)
    try:  # nothing was created for the queue the envelope named
        assert await client.keys(f"{prefix}{{{other}}}*") == []
    finally:
        await client.aclose()
    await queue.delete()


async def test_a_message_naming_another_queue_is_retried_and_dead_lettered_where_it_was_read(
    connect: Any,
) -> None:
    conn = await connect(lease_duration=1.0)
    queue = await _queue(conn)
    envelope = encode_message(
        RoutingKey("d5-fail", "fails", f"not-{queue.name}"),
        "{}",
        Parameters()._replace(retries=Parameters().retries._replace(max_amount=1)),
    )
    await _publish_raw(conn, queue, [envelope])
    router = Router()
    runs: list[int] = []

    @router.actor(queue=queue.name, retry_policy=lambda n=1: 0)
    async def fails() -> None:
        runs.append(len(runs) + 1)
        raise RuntimeError("always")

    worker = Worker([router], messages_limit=2, handle_signals=[], _connection=conn)
    runner = await asyncio.wait_for(worker.run(), DEADLINE)

    assert runs == [1, 2]
    assert (runner.retried, runner.dead_lettered) == (1, 1)
    (dead,) = await _dead(queue)
    assert dead.key.id_ == "d5-fail"
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "exception"
    assert await _pending(conn, queue) == 0
    await queue.delete()


async def test_queue_names_from_messages_add_nothing_to_the_caches(connect: Any) -> None:
    conn = await connect()
    broker = conn.message_broker
    queue = await _queue(conn)
    count = _CACHED_QUEUES + 100
    names = [f"foreign-{i}-{uuid4().hex[:6]}" for i in range(count)]
    await _publish_raw(conn, queue, [_foreign(f"d5-{i}", "job", n) for i, n in enumerate(names)])
    router = Router()
    runs: list[None] = []

    @router.actor(queue=queue.name)
    async def job() -> None:
        runs.append(None)

    worker = Worker([router], messages_limit=count, handle_signals=[], _connection=conn)
    await asyncio.wait_for(worker.run(), DEADLINE * 2)

    assert len(runs) == count
    assert not set(names) & set(broker._keys), "names from envelopes were cached"
    assert {name for name, *_ in broker._enqueue_heads}.isdisjoint(names)
    assert set(broker._acks) <= {queue.name}
    assert await _pending(conn, queue) == 0
    await queue.delete()


async def test_caches_stay_bounded_whatever_names_callers_use(connect: Any) -> None:
    conn = await connect()
    broker = conn.message_broker
    for i in range(_CACHED_QUEUES + 200):
        broker.keys(f"asked-{i}")
    assert len(broker._keys) <= _CACHED_QUEUES
    for i in range(_CACHED_QUEUES + 50):
        with pytest.raises(QueueNotDeclaredError):
            await broker.enqueue(RoutingKey(f"e{i}", "job", f"undeclared-{uuid4().hex[:8]}"))
    assert len(broker._enqueue_heads) <= _CACHED_QUEUES
    assert len(broker._keys) <= _CACHED_QUEUES
