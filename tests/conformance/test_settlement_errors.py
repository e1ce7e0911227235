"""Errors in repid's own settlement code end in a dead letter with a reason, never in an endless
redelivery loop (issue 26, defect 2): recurring messages whose next tick cannot be computed, and
any other exception raised while a delivery is settled."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import pytest

from repid import MessageCategory, MessageDependency
from repid.data import DelayProperties, Parameters, RetriesProperties, RoutingKey
from repid.worker.settlement import Settling

from .support import browse, make_worker, router_for, running

SCHEDULES = {
    "bad-cron": DelayProperties(cron="not a cron string"),
    # An interval of 0 only reaches the wire with a due time (0 is falsy); a past one: due now.
    "zero-interval": DelayProperties(
        defer_by=timedelta(0), next_execution_time=datetime(2020, 1, 1, tzinfo=UTC)
    ),
    "negative-interval": DelayProperties(defer_by=timedelta(seconds=-5)),
}


async def _dead_reasons(queue) -> list[str | None]:
    dead = await browse(queue, MessageCategory.DEAD)
    return [m.dead_letter.reason if m.dead_letter else None for m in dead]


async def _wait_dead_letter(queue, runs: list[None], timeout: float = 10.0) -> None:
    """Poll the dead part (no event for it) until a message lands there."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _dead_reasons(queue):
        assert loop.time() < deadline, f"not dead-lettered after {len(runs)} runs"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("schedule", sorted(SCHEDULES))
async def test_a_recurring_message_without_a_next_tick_is_dead_lettered_once(
    conn, new_queue, schedule
):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[None] = []

    @router.actor
    async def tick() -> None:
        runs.append(None)

    # Published straight into the broker: `Job` refuses such schedules at enqueue.
    key = RoutingKey(f"poison-{uuid4().hex[:8]}", "tick", queue.name)
    await conn.raw_message_broker.enqueue(key, "{}", Parameters(delay=SCHEDULES[schedule]))
    async with running(make_worker(conn, router)):
        await _wait_dead_letter(queue, runs)
    assert await _dead_reasons(queue) == ["schedule_error"]
    assert len(runs) == 1
    assert await browse(queue) == []


async def test_an_exception_in_the_settlement_code_dead_letters_as_internal_error(
    conn, new_queue, monkeypatch
):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[None] = []

    @router.actor
    async def work(message: MessageDependency) -> int:  # not the plain-ack fast path
        runs.append(None)
        return 1

    async def broken_settlement(*args: object, **kwargs: object) -> None:
        raise AttributeError("simulated bug in repid's settlement code")

    monkeypatch.setattr(Settling, "_succeeded", broken_settlement)
    key = RoutingKey(f"bug-{uuid4().hex[:8]}", "work", queue.name)
    await conn.raw_message_broker.enqueue(key, "{}", Parameters(retries=RetriesProperties(3, 0)))
    async with running(make_worker(conn, router)):
        await _wait_dead_letter(queue, runs)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "internal_error"
    assert dead.dead_letter.error_type == "AttributeError"
    assert len(runs) == 1
    assert await browse(queue) == []
