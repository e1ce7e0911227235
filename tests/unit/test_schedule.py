"""Recurring schedules: the next tick, missed ticks coalesced, cron jobs recurring on a worker."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from repid import Connection, InMemoryMessageBroker, Job, Queue, Worker
from repid.data import DelayProperties, Parameters, next_tick


def test_interval_keeps_its_phase() -> None:
    planned = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    delay = DelayProperties(defer_by=timedelta(seconds=10), next_execution_time=planned)
    # the run finished 3 s after its planned time: the next tick is planned + 10 s, not now + 10 s
    assert next_tick(delay, planned + timedelta(seconds=3)) == planned + timedelta(seconds=10)


def test_missed_ticks_are_coalesced_into_the_next_future_tick() -> None:
    planned = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    delay = DelayProperties(defer_by=timedelta(minutes=1), next_execution_time=planned)
    now = planned + timedelta(minutes=10, seconds=30)  # no worker for ten minutes
    assert next_tick(delay, now) == planned + timedelta(minutes=11)


def test_cron_next_tick_is_strictly_after_now() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert next_tick(DelayProperties(cron="*/5 * * * *"), now) == now + timedelta(minutes=5)


def test_next_tick_parameters_reset_retries_and_dead_letter_details() -> None:
    params = Parameters(delay=DelayProperties(defer_by=timedelta(seconds=5))).for_retry(
        timedelta(0)
    )
    nxt = params.for_next_tick()
    assert nxt.retries.actual_amount == 0
    assert nxt.delay.next_execution_time is not None
    assert nxt.delay.next_execution_time > datetime.now(tz=UTC)


async def test_cron_job_recurs_on_a_worker() -> None:
    conn = Connection(InMemoryMessageBroker())
    await conn.connect()
    await Queue(_connection=conn).declare()
    worker = Worker(handle_signals=[], _connection=conn)
    loop = asyncio.get_running_loop()
    runs: list[float] = []
    twice = asyncio.Event()

    @worker.actor
    async def tick() -> None:
        runs.append(loop.time())
        if len(runs) == 2:
            twice.set()

    await Job("tick", cron="* * * * * *", id_="every-second", _connection=conn).enqueue()
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(twice.wait(), 5)
    finally:
        worker.stop()
        await task
    assert runs[1] - runs[0] >= 0.5  # one run per tick, not back to back
    counts = conn.raw_message_broker.counts("default")  # type: ignore[attr-defined]
    assert counts["delayed"] + counts["ready"] == 1  # the schedule is still there, once


async def test_a_silent_worker_is_dropped_after_the_staleness_window() -> None:
    from repid.lifecycle import STALE_AFTER, WorkerInfo

    now = [1000.0]
    broker = InMemoryMessageBroker(clock=lambda: now[0])
    conn = Connection(broker)
    info = WorkerInfo("host:1:abc", "host", 1, ("default",), 10, 0, now[0], now[0])
    await broker.heartbeat(info)
    assert [w.id for w in await conn.live_workers()] == ["host:1:abc"]
    now[0] += STALE_AFTER - 1
    assert len(await conn.live_workers()) == 1  # still within the window
    now[0] += 2
    assert await conn.live_workers() == []  # silent for longer than STALE_AFTER
