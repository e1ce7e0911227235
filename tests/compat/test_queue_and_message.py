"""Code written for repid 1.6 (issue 16): browsing a queue with `get_messages()`, settling
`Message`s by hand, and a consumer's `consume()` — on every broker.

Written as 1.6's own queue tests were: `await q.get_messages().__anext__()` and
`asyncio.wait_for(..., timeout)` on an empty part.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime, timedelta

import pytest

from repid import Connection, Job, Message, MessageCategory, Queue, Repid

WAIT = 1.0


@pytest.fixture
async def q(conn: Connection, new_queue) -> AsyncIterator[Queue]:  # type: ignore[no-untyped-def]
    """A declared queue on the broker under test, with `conn` as the default connection."""
    queue: Queue = await new_queue()
    Repid.set_magic_connection(conn)
    yield Queue(queue.name)
    Repid.set_magic_connection(None)


async def _dead(q: Queue, name: str = "myjob") -> None:
    await Job(name, queue=q).enqueue()
    m = await q.get_messages().__anext__()
    await m.nack()


@pytest.mark.parametrize("category", list(MessageCategory))
async def test_get_message_from_empty_queue_waits(q: Queue, category: MessageCategory) -> None:
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get_messages(category=category).__anext__(), timeout=WAIT)


async def test_get_messages_waits_for_a_message_enqueued_later(q: Queue) -> None:
    messages = q.get_messages()
    waiter = asyncio.ensure_future(messages.__anext__())
    # the iterator waits on the empty queue: it neither ends nor yields
    done, _ = await asyncio.wait({waiter}, timeout=0.3)
    assert not done
    await Job("later", queue=q).enqueue()
    m = await asyncio.wait_for(waiter, timeout=10.0)
    assert m.key.topic == "later"
    await m.ack()
    await messages.aclose()


async def test_get_normal_message_then_ack(q: Queue) -> None:
    await Job("myjob", queue=q).enqueue()
    m = await q.get_messages().__anext__()
    assert isinstance(m, Message)
    assert m.category == MessageCategory.NORMAL
    assert m.key.topic == "myjob"
    for _ in range(10):  # let the loop finalise the dropped iterator meanwhile
        await asyncio.sleep(0)
    await m.ack()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(q.get_messages().__anext__(), timeout=WAIT)


async def test_get_delayed_message(q: Queue) -> None:
    await Job("myjob", queue=q, deferred_until=datetime.now() + timedelta(minutes=1)).enqueue()
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            q.get_messages(category=MessageCategory.NORMAL).__anext__(), timeout=WAIT
        )
    m = await asyncio.wait_for(
        q.get_messages(category=MessageCategory.DELAYED).__anext__(), timeout=10.0
    )
    assert m.category == MessageCategory.DELAYED
    assert m.key.topic == "myjob"
    await m.ack()


async def test_get_dead_message(q: Queue) -> None:
    await _dead(q)
    m = await asyncio.wait_for(
        q.get_messages(category=MessageCategory.DEAD).__anext__(), timeout=10.0
    )
    assert m.category == MessageCategory.DEAD
    assert m.key.topic == "myjob"
    await m.ack()


async def test_read_only_message(q: Queue) -> None:
    await Job("myjob", queue=q).enqueue()
    m = await q.get_messages().__anext__()
    assert m.read_only is False
    await m.ack()
    assert m.read_only is True
    for settle in (m.ack, m.nack, m.reschedule, m.reject, m.retry, m.force_retry):
        with pytest.raises(ValueError, match=r"Message is read only\."):
            await settle()


@pytest.mark.parametrize("category", [MessageCategory.DELAYED, MessageCategory.DEAD])
async def test_message_non_normal_category(q: Queue, category: MessageCategory) -> None:
    if category == MessageCategory.DELAYED:
        await Job("myjob", queue=q, deferred_until=datetime.now() + timedelta(minutes=1)).enqueue()
    else:
        await _dead(q)
    m = await asyncio.wait_for(q.get_messages(category=category).__anext__(), timeout=10.0)
    assert m.category == category
    with pytest.raises(ValueError, match=f"Can not nack message with category {category}."):
        await m.nack()
    with pytest.raises(ValueError, match=f"Can not retry message with category {category}."):
        await m.retry()
    with pytest.raises(ValueError, match=f"Can not force retry message with category {category}."):
        await m.force_retry()
    assert m.read_only is False  # nothing happened to it
    await m.ack()


async def test_consume_returns_a_3_tuple(q: Queue, conn: Connection) -> None:
    await Job("myjob", queue=q, args={"a": 1}).enqueue()
    consumer = conn.message_broker.get_consumer(q.name)
    await consumer.start()
    try:
        key, payload, parameters = await asyncio.wait_for(consumer.consume(), timeout=10.0)
        assert key.topic == "myjob"
        assert payload == '{"a":1}'
        assert parameters.retries.max_amount == 0
        await conn.message_broker.ack(key)
    finally:
        await consumer.finish()
