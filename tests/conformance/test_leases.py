"""At-least-once through leases: renewal while an actor runs, redelivery after a consumer vanishes.

These run on brokers that declare `lease_renewal`, with a short `lease_duration`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from repid import MessageCategory

from .conftest import require
from .support import assert_empty, job, make_worker, router_for, running, wait

LEASE = 1.0


async def test_capabilities_declare_the_lease_duration(make_conn):
    conn = await make_conn()
    require(conn, lease_renewal=True)
    short = await make_conn(lease_duration=LEASE)
    assert short.message_broker.capabilities.lease_duration == LEASE


async def test_actor_running_past_the_lease_is_not_run_twice(make_conn, new_queue):
    conn = await make_conn(lease_duration=LEASE)
    require(conn, lease_renewal=True)
    queue = await new_queue(conn)
    router = router_for(queue)
    runs: list[float] = []
    finished = asyncio.Event()

    @router.actor
    async def long() -> None:
        runs.append(time.monotonic())
        await asyncio.sleep(2.5 * LEASE)  # the work outlives its lease several times
        finished.set()

    await job(conn, "long", queue).enqueue()
    # A second lane is free: a redelivered copy would be taken by it at once.
    worker = make_worker(conn, router, tasks_limit=2)
    async with running(worker) as task:
        await wait(finished, "the long actor", timeout=2.5 * LEASE + 3)
        worker.stop()
        await asyncio.wait_for(asyncio.shield(task), 5.0)
    runner = task.result()
    assert len(runs) == 1, "the message was redelivered while its actor was running"
    assert runner.succeeded == 1
    await assert_empty(queue)


async def test_unsettled_delivery_is_redelivered_after_its_lease(make_conn, new_queue, caplog):
    conn = await make_conn(lease_duration=0.5)
    require(conn, lease_renewal=True)
    queue = await new_queue(conn)
    broker = conn.message_broker
    await job(conn, "orphan", queue, args={"n": 1}).enqueue()

    vanished = broker.get_consumer(queue.name)
    await vanished.start()
    (taken,) = await vanished.fetch(1, 1.0)
    taken_at = time.monotonic()
    assert not taken.redelivered
    # The consumer disappears without settling or finishing.
    del vanished

    survivor = broker.get_consumer(queue.name)
    await survivor.start()
    try:
        assert await survivor.fetch(1, 0.0) == [], "handed out again before the lease ran out"
        redelivered = await survivor.fetch(1, 5.0)
        assert len(redelivered) == 1, "an abandoned delivery was never handed out again"
        (again,) = redelivered
        assert time.monotonic() - taken_at >= 0.5 * 0.95
        assert again.key.id_ == taken.key.id_
        assert again.payload == taken.payload
        assert again.redelivered

        # The vanished consumer's settlements are stale: ignored (and logged), they do not
        # touch the copy.
        with caplog.at_level(logging.WARNING):
            assert await broker.ack(taken) is False
            assert await broker.nack(taken) is False
            assert await broker.reject(taken) is False
            assert await broker.requeue(taken) is False
        stale = [r for r in caplog.records if "stale" in r.getMessage()]
        assert len(stale) == 4, [r.getMessage() for r in caplog.records]
        assert await survivor.fetch(1, 0.0) == [], "a stale settlement released the new copy"
        assert await broker.ack(again) is True
    finally:
        await survivor.finish()
    await assert_empty(queue)


async def test_worker_runs_a_message_abandoned_by_another_consumer(make_conn, new_queue):
    conn = await make_conn(lease_duration=0.5)
    require(conn, lease_renewal=True)
    queue = await new_queue(conn)
    router = router_for(queue)
    ran = asyncio.Event()

    @router.actor
    async def orphan() -> None:
        ran.set()

    await job(conn, "orphan", queue).enqueue()
    crashed = conn.message_broker.get_consumer(queue.name)
    await crashed.start()
    assert len(await crashed.fetch(1, 1.0)) == 1

    async with running(make_worker(conn, router)):
        await wait(ran, "the abandoned message to be run by the worker")
    await assert_empty(queue, [MessageCategory.NORMAL, MessageCategory.DEAD])


async def test_prefetched_message_waiting_for_a_lane_is_not_run_twice(make_conn, new_queue):
    conn = await make_conn(lease_duration=LEASE)
    require(conn, lease_renewal=True)
    slow_queue, quick_queue = await new_queue(conn), await new_queue(conn)
    slow_router, quick_router = router_for(slow_queue), router_for(quick_queue)
    runs: list[str] = []
    slow_started = asyncio.Event()
    slow_done = asyncio.Event()

    async def quick() -> None:
        runs.append("quick")

    @slow_router.actor
    async def slow() -> None:
        slow_started.set()
        await asyncio.sleep(2.5 * LEASE)
        slow_done.set()

    quick_router.actor(quick)
    only_quick = router_for(quick_queue)
    only_quick.actor(quick)

    # Worker A (one lane, both queues) runs `slow` and meanwhile prefetches `quick` into its inbox.
    busy = make_worker(conn, slow_router, quick_router, tasks_limit=1)
    async with running(busy):
        await job(conn, "slow", slow_queue).enqueue()
        await wait(slow_started, "the slow actor to start")
        await job(conn, "quick", quick_queue).enqueue()
        await asyncio.sleep(0.1)
        # Worker B serves the quick queue only and is idle.
        async with running(make_worker(conn, only_quick)):
            await wait(slow_done, "the slow actor", timeout=2.5 * LEASE + 3)
            await asyncio.sleep(0.3)  # let worker A run what waited in its inbox
    assert runs == ["quick"], f"quick ran {len(runs)} times"
