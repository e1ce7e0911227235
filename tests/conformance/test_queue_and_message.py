"""Queues (declare, flush, delete, browse by category) and settling `Message`s by hand."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime, timedelta

import pytest

from repid import MessageCategory, Queue, QueueNotDeclaredError
from repid.message import MessageReadOnlyError

from .support import (
    assert_empty,
    browse,
    consumed,
    job,
    make_worker,
    router_for,
    running,
    wait,
    wait_until,
)

LATER = timedelta(hours=1)


async def _fill(conn, queue) -> None:
    """Two ready messages, one delayed, one dead."""
    await job(conn, "ready", queue, args={"n": 1}).enqueue()
    await job(conn, "ready", queue, args={"n": 2}).enqueue()
    await job(conn, "later", queue, deferred_until=datetime.now(tz=UTC) + LATER).enqueue()
    await job(conn, "doomed", queue).enqueue()
    async with consumed(queue, 3) as messages:
        for message in messages:
            if message.key.topic == "doomed":
                await message.nack()


async def test_get_messages_by_category(conn, new_queue):
    queue = await new_queue()
    await _fill(conn, queue)

    normal = await browse(queue, MessageCategory.NORMAL)
    delayed = await browse(queue, MessageCategory.DELAYED)
    dead = await browse(queue, MessageCategory.DEAD)

    assert sorted(m.raw_payload for m in normal) == ['{"n":1}', '{"n":2}']
    assert {m.category for m in normal} == {MessageCategory.NORMAL}
    assert [m.key.topic for m in delayed] == ["later"]
    assert delayed[0].category is MessageCategory.DELAYED
    assert [m.key.topic for m in dead] == ["doomed"]
    assert dead[0].category is MessageCategory.DEAD
    # Browsing is repeatable: nothing was consumed.
    assert len(await browse(queue, MessageCategory.NORMAL)) == 2
    assert len(await browse(queue, MessageCategory.DELAYED)) == 1
    assert len(await browse(queue, MessageCategory.DEAD)) == 1


async def test_browsing_ready_messages_keeps_their_order(conn, new_queue):
    queue = await new_queue()
    for n in range(3):
        await job(conn, "ready", queue, args={"n": n}).enqueue()
    first = [m.raw_payload for m in await browse(queue)]
    second = [m.raw_payload for m in await browse(queue)]
    assert first == ['{"n":0}', '{"n":1}', '{"n":2}']
    assert second == first, "browsing without settling reordered the queue"


async def test_flush_empties_every_part(conn, new_queue):
    queue = await new_queue()
    await _fill(conn, queue)
    await queue.flush()
    await assert_empty(queue)
    # The queue still exists and works.
    await job(conn, "ready", queue).enqueue()
    assert len(await browse(queue)) == 1


async def test_delete_removes_the_queue_and_its_messages(conn, new_queue):
    queue = await new_queue()
    await _fill(conn, queue)
    await queue.delete()
    with pytest.raises(QueueNotDeclaredError):
        await job(conn, "ready", queue).enqueue()
    await queue.declare()
    await assert_empty(queue)


async def test_enqueue_to_an_undeclared_queue_raises(conn, new_queue):
    queue = await new_queue()
    await queue.delete()
    with pytest.raises(QueueNotDeclaredError):
        await job(conn, "x", queue).enqueue()


async def _empty_by_flush(queue: Queue) -> None:
    await queue.flush()


async def _empty_by_delete_and_declare(queue: Queue) -> None:
    await queue.delete()
    await queue.declare()


@pytest.mark.parametrize("empty", [_empty_by_flush, _empty_by_delete_and_declare])
async def test_emptying_the_queue_while_a_worker_holds_a_message_does_not_stall_it(
    conn, new_queue, empty
):
    queue = await new_queue()
    router = router_for(queue)
    started = asyncio.Event()
    release = asyncio.Event()
    second = asyncio.Event()

    @router.actor
    async def hold(n: int) -> None:
        started.set()
        if n == 1:
            await release.wait()
        else:
            second.set()

    async with running(make_worker(conn, router, tasks_limit=1)):
        await job(conn, "hold", queue, args={"n": 1}).enqueue()
        await wait(started, "the first actor")
        await empty(queue)
        release.set()
        await job(conn, "hold", queue, args={"n": 2}).enqueue()
        await wait(second, "a job enqueued after the queue was emptied", timeout=2.0)


async def test_get_messages_shows_two_ready_messages_with_the_same_id(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue, id_="same-id", args={"n": 1}).enqueue()
    async with consumed(queue) as (first,):
        await first.nack()
    # A dead id is no longer pending: the same id can be enqueued again.
    await job(conn, "x", queue, id_="same-id", args={"n": 2}).enqueue()
    (dead,) = await browse(queue, MessageCategory.DEAD)
    await dead.retry(revive=True)
    payloads = sorted(m.raw_payload for m in await browse(queue))
    assert payloads == ['{"n":1}', '{"n":2}']


async def test_ack_removes_and_makes_read_only(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue).enqueue()
    async with consumed(queue) as (message,):
        assert not message.read_only
        await message.ack()
        assert message.read_only
        assert message.outcome == "ack"
        with pytest.raises(MessageReadOnlyError):
            await message.ack()
        with pytest.raises(MessageReadOnlyError):
            await message.reject()
    await assert_empty(queue)


async def test_nack_dead_letters_with_reason_manual(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue, retries=3).enqueue()
    async with consumed(queue) as (message,):
        await message.nack()
        assert message.outcome == "nack"
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "manual"
    assert dead.dead_letter.attempts == 1
    await assert_empty(queue, [MessageCategory.NORMAL, MessageCategory.DELAYED])


async def test_reject_returns_without_counting_an_attempt(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue, retries=3).enqueue()
    async with consumed(queue) as (message,):
        await message.reject()
        assert message.read_only
    (again,) = await browse(queue)
    assert again.parameters.retries.actual_amount == 0
    await assert_empty(queue, [MessageCategory.DEAD, MessageCategory.DELAYED])


async def test_retry_counts_an_attempt_and_needs_retries_left(conn, new_queue):
    queue = await new_queue()
    await job(conn, "with_retry", queue, retries=1).enqueue()
    await job(conn, "without_retry", queue, retries=0).enqueue()
    async with consumed(queue, 2) as messages:
        for message in messages:
            if message.key.topic == "with_retry":
                await message.retry(timedelta(0))
                assert message.outcome == "retry"
            else:
                with pytest.raises(ValueError, match="no retries left"):
                    await message.retry()
                assert not message.read_only  # a refused retry settles nothing
    retried = {m.key.topic: m.parameters.retries.actual_amount for m in await browse(queue)}
    assert retried == {"with_retry": 1, "without_retry": 0}


async def test_retry_with_a_delay_moves_to_delayed(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue, retries=1).enqueue()
    async with consumed(queue) as (message,):
        await message.retry(LATER)
    assert await browse(queue) == []
    (delayed,) = await browse(queue, MessageCategory.DELAYED)
    assert delayed.parameters.retries.actual_amount == 1


async def test_get_messages_loop_ends_when_messages_are_rejected(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue).enqueue()
    seen: list[str] = []
    # The loop is bounded here: on the in-memory broker it never suspends, so a timeout could
    # not interrupt it.
    async with contextlib.aclosing(queue.get_messages(stop_when_empty=True)) as messages:
        async for message in messages:
            seen.append(message.key.id_)
            await message.reject()
            if len(seen) >= 3:
                break
    assert len(seen) == 1, f"the same message was yielded {len(seen)}+ times"


async def test_get_messages_loop_yields_a_message_retried_in_it_once(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue, retries=10).enqueue()
    seen: list[int] = []
    async with contextlib.aclosing(queue.get_messages(stop_when_empty=True)) as messages:
        async for message in messages:
            seen.append(message.parameters.attempt)
            await message.retry(timedelta(0))
            if len(seen) >= 3:
                break
    assert seen == [1], f"the same message was yielded at attempts {seen}"
    (again,) = await browse(queue)
    assert again.parameters.retries.actual_amount == 1


async def test_unsettled_consumed_messages_return_to_the_queue(conn, new_queue):
    queue = await new_queue()
    await job(conn, "x", queue).enqueue()
    messages = queue.get_messages(stop_when_empty=True)
    message = await anext(messages)
    assert message.key.topic == "x"
    await messages.aclose()  # the caller gave up without settling
    assert message.read_only
    assert len(await browse(queue)) == 1


async def test_browsed_delayed_message_ack_deletes_and_reject_keeps(conn, new_queue):
    queue = await new_queue()
    later = datetime.now(tz=UTC) + LATER
    await job(conn, "keep", queue, deferred_until=later).enqueue()
    await job(conn, "drop", queue, deferred_until=later).enqueue()
    async for message in queue.get_messages(category=MessageCategory.DELAYED, stop_when_empty=True):
        if message.key.topic == "drop":
            await message.ack()
        else:
            await message.reject()
    assert [m.key.topic for m in await browse(queue, MessageCategory.DELAYED)] == ["keep"]
    assert await browse(queue) == []


async def test_browsed_dead_message_ack_deletes_it(conn, new_queue):
    queue = await new_queue()
    await _fill(conn, queue)
    async for message in queue.get_messages(category=MessageCategory.DEAD, stop_when_empty=True):
        await message.ack()
    await assert_empty(queue, [MessageCategory.DEAD])
    assert len(await browse(queue)) == 2


async def test_worker_sees_a_message_retried_by_hand(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    attempts: list[int] = []

    @router.actor
    async def x() -> None:
        attempts.append(1)

    await job(conn, "x", queue, retries=1).enqueue()
    async with consumed(queue) as (message,):
        await message.retry(timedelta(0))
    async with running(make_worker(conn, router)):
        await wait_until(lambda: attempts == [1], "the retried message to run")
    await assert_empty(queue)
