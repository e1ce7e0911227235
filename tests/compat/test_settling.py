"""Code written for repid 1.6 (issue 16): an actor that settles its `MessageDependency` ends
there, and `Message.retry()` without a delay retries at once — on every broker.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest

from repid import Connection, Job, MessageCategory, MessageDependency, Queue, Repid, Router, Worker

RUN = 20.0
"""Seconds a worker run may take before the test fails."""


@pytest.fixture
async def q(conn: Connection, new_queue) -> AsyncIterator[Queue]:  # type: ignore[no-untyped-def]
    """A declared queue on the broker under test, with `conn` as the default connection."""
    queue: Queue = await new_queue()
    Repid.set_magic_connection(conn)
    yield Queue(queue.name)
    Repid.set_magic_connection(None)


async def _ids(q: Queue, category: MessageCategory) -> list[str]:
    return [m.key.id_ async for m in q.get_messages(category=category, stop_when_empty=True)]


@pytest.mark.parametrize("how", ["ack", "nack", "reject", "retry", "reschedule"])
async def test_settling_ends_the_actor(q: Queue, how: str) -> None:
    runs: list[str] = []
    r = Router()

    @r.actor(name="settle", queue=q.name)
    async def settle(message: MessageDependency) -> None:
        runs.append("run")
        if len(runs) > 1:  # reject/retry/reschedule bring it back once: then done
            return
        try:
            await getattr(message, how)()
        except Exception:  # 1.6 code may guard the call; the end of the actor is not an error
            runs.append("caught")
        runs.append("went on")
        raise RuntimeError("never reached in 1.6")

    await Job("settle", queue=q, retries=1).enqueue()
    limit = 1 if how in ("ack", "nack") else 2
    runner = await asyncio.wait_for(
        Worker(routers=[r], messages_limit=limit, handle_signals=[]).run(), timeout=RUN
    )
    assert runs == ["run"] * limit
    assert runner.failed == 0
    assert runner.retried == 0  # the actor's own retry is not a failure's retry
    assert len(await _ids(q, MessageCategory.DEAD)) == (1 if how == "nack" else 0)
    assert await _ids(q, MessageCategory.NORMAL) == []


async def test_settle_ends_actor_false_lets_the_actor_go_on(q: Queue) -> None:
    runs: list[str] = []
    r = Router()

    @r.actor(name="settle", queue=q.name)
    async def settle(message: MessageDependency) -> None:
        await message.ack()
        runs.append("went on")

    await Job("settle", queue=q).enqueue()
    w = Worker(routers=[r], messages_limit=1, handle_signals=[], settle_ends_actor=False)
    await asyncio.wait_for(w.run(), timeout=RUN)
    assert runs == ["went on"]
    assert await _ids(q, MessageCategory.NORMAL) == []


async def test_message_retry_without_a_delay_retries_at_once(q: Queue) -> None:
    await Job("myjob", queue=q, retries=3).enqueue()
    m = await asyncio.wait_for(q.get_messages().__anext__(), timeout=10.0)
    await m.retry()
    again = await asyncio.wait_for(q.get_messages().__anext__(), timeout=10.0)
    assert again.key.id_ == m.key.id_
    assert again.parameters.retries.actual_amount == 1
    await again.ack()
    assert await _ids(q, MessageCategory.DELAYED) == []


async def test_message_retry_policy_delay_is_opt_in(q: Queue) -> None:
    await Job("myjob", queue=q, retries=3).enqueue()
    m = await asyncio.wait_for(q.get_messages().__anext__(), timeout=10.0)
    await m.retry(policy_delay=True)  # the default policy waits at least 10 s
    assert await _ids(q, MessageCategory.NORMAL) == []
    delayed = await asyncio.wait_for(
        q.get_messages(category=MessageCategory.DELAYED).__anext__(), timeout=10.0
    )
    assert delayed.key.id_ == m.key.id_
    assert delayed.parameters.delay.next_execution_time is not None
    await delayed.ack()


async def test_message_retry_with_a_delay_waits(q: Queue) -> None:
    await Job("myjob", queue=q, retries=3).enqueue()
    m = await asyncio.wait_for(q.get_messages().__anext__(), timeout=10.0)
    await m.retry(timedelta(minutes=5))
    assert await _ids(q, MessageCategory.NORMAL) == []
    assert len(await _ids(q, MessageCategory.DELAYED)) == 1
