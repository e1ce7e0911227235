"""Stopping a worker: graceful shutdown, `Worker.stop()`, `messages_limit`."""

from __future__ import annotations

import asyncio

from repid import MessageCategory

from .support import assert_empty, browse, job, make_worker, router_for, run_to_limit, running, wait


async def test_actor_past_the_grace_period_is_cancelled_and_returned_without_an_attempt(
    conn, new_queue
):
    queue = await new_queue()
    router = router_for(queue)
    started = asyncio.Event()
    cancelled = asyncio.Event()
    never = asyncio.Event()

    @router.actor
    async def endless() -> None:
        started.set()
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await job(conn, "endless", queue, retries=2).enqueue()
    worker = make_worker(conn, router, graceful_shutdown_time=0.3)
    async with running(worker) as task:
        await wait(started, "the actor to start")
        worker.stop()
        await asyncio.wait_for(asyncio.shield(task), 5.0)
    runner = task.result()

    assert cancelled.is_set()
    assert runner.rejected == 1
    assert runner.failed == 0
    (returned,) = await browse(queue)
    assert returned.key.topic == "endless"
    assert returned.parameters.retries.actual_amount == 0
    assert returned.parameters.retries.max_amount == 2
    await assert_empty(queue, [MessageCategory.DEAD, MessageCategory.DELAYED])


async def test_actor_finishing_within_the_grace_period_is_acked(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[None] = []

    @router.actor
    async def short() -> None:
        started.set()
        await release.wait()
        finished.append(None)

    await job(conn, "short", queue).enqueue()
    worker = make_worker(conn, router, graceful_shutdown_time=5.0)
    async with running(worker) as task:
        await wait(started, "the actor to start")
        worker.stop()
        await asyncio.sleep(0.05)
        assert not task.done(), "the worker did not wait for its running actor"
        release.set()
        await asyncio.wait_for(asyncio.shield(task), 5.0)
    runner = task.result()

    assert finished == [None]
    assert (runner.succeeded, runner.rejected) == (1, 0)
    await assert_empty(queue)


async def _stop_then_enqueue(conn, queue, *, settle_stop_first: bool) -> list[int]:
    """Stop a worker busy with one actor (a lane free), enqueue another job, let it drain."""
    router = router_for(queue)
    runs: list[int] = []
    first = asyncio.Event()
    release = asyncio.Event()

    @router.actor
    async def count(n: int) -> None:
        runs.append(n)
        first.set()
        await release.wait()

    worker = make_worker(conn, router, tasks_limit=2, graceful_shutdown_time=5.0)
    async with running(worker) as task:
        await job(conn, "count", queue, args={"n": 1}).enqueue()
        await wait(first, "the first job")
        worker.stop()
        if settle_stop_first:
            for _ in range(5):
                await asyncio.sleep(0)
        await job(conn, "count", queue, args={"n": 2}).enqueue()
        for _ in range(20):
            await asyncio.sleep(0)
        release.set()
        await asyncio.wait_for(asyncio.shield(task), 5.0)
    return runs


async def test_stopping_worker_takes_no_new_message(conn, new_queue):
    queue = await new_queue()
    runs = await _stop_then_enqueue(conn, queue, settle_stop_first=True)
    assert runs == [1]
    (left,) = await browse(queue)
    assert left.raw_payload == '{"n":2}'


async def test_message_arriving_as_the_stop_is_requested_is_not_run(conn, new_queue):
    queue = await new_queue()
    runs = await _stop_then_enqueue(conn, queue, settle_stop_first=False)
    assert runs == [1]
    (left,) = await browse(queue)
    assert left.raw_payload == '{"n":2}'


async def test_messages_limit_stops_the_worker_and_leaves_the_rest(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[int] = []

    @router.actor
    async def count(n: int) -> None:
        runs.append(n)

    for n in range(5):
        await job(conn, "count", queue, args={"n": n}).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3, tasks_limit=1))

    assert runner.processed == 3
    assert sorted(runs) == [0, 1, 2]
    assert len(await browse(queue)) == 2


async def test_stop_right_after_starting_run_is_honoured(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def idle() -> None:
        pass

    worker = make_worker(conn, router)
    task = asyncio.create_task(worker.run())
    worker.stop()
    try:
        done, _ = await asyncio.wait({task}, timeout=1.0)
        assert task in done, "the worker ignored a stop requested as it started"
    finally:
        while not task.done():
            worker.stop()
            await asyncio.wait({task}, timeout=0.05)
