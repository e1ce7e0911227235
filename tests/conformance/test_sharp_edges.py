"""Sharp edges of the worker (issue 17): one run() at a time, unserialisable results, sync
actors returning coroutines, `Job(timeout=None)`."""

from __future__ import annotations

import asyncio
import warnings
from datetime import timedelta

import pytest

from repid import MessageCategory

from .support import browse, job, make_worker, router_for, run_to_limit, running, wait, wait_until


async def test_a_second_concurrent_run_raises_and_stop_still_ends_the_first(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    started = asyncio.Event()

    @router.actor
    async def noop() -> None:
        started.set()

    worker = make_worker(conn, router)
    async with running(worker):
        await job(conn, "noop", queue).enqueue()
        await wait(started, "the first run consuming")
        with pytest.raises(RuntimeError, match="already running"):
            await worker.run()
    # running() stopped the first run through worker.stop(): it was not stranded.
    assert worker._runner is not None
    assert worker._runner.processed >= 1


async def test_an_unserialisable_result_counts_only_as_failed(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def returns_object() -> object:
        return object()

    await job(conn, "returns_object", queue, store_result=True).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert (runner.succeeded, runner.failed, runner.dead_lettered) == (0, 1, 1)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "exception"


async def test_a_sync_actor_returning_a_coroutine_is_a_type_error_failure(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    async def work() -> int:
        return 1

    @router.actor
    def sync_returns_coroutine() -> object:
        return work()

    await job(conn, "sync_returns_coroutine", queue).enqueue()
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no "coroutine was never awaited"
        runner = await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert (runner.succeeded, runner.failed, runner.dead_lettered) == (0, 1, 1)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    info = dead.dead_letter
    assert info is not None
    assert info.error_type == "TypeError"
    assert info.error_message is not None
    assert "async def" in info.error_message


async def test_timeout_none_means_no_timeout(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    release = asyncio.Event()
    unbounded_started = asyncio.Event()

    @router.actor
    async def unbounded() -> str:
        unbounded_started.set()
        await release.wait()
        return "done"

    @router.actor
    async def bounded() -> None:
        await release.wait()

    unbounded_job = await job(conn, "unbounded", queue, timeout=None, store_result=True).enqueue()
    worker = make_worker(conn, router, tasks_limit=4)
    async with running(worker):
        await wait(unbounded_started, "the unbounded actor starting")
        await job(conn, "bounded", queue, timeout=timedelta(seconds=1)).enqueue()
        # The bounded job started after the unbounded one: when the timeout check cancels it,
        # the unbounded one has run longer and was checked in the same sweep.
        await wait_until(
            lambda: worker._runner is not None and worker._runner.failed >= 1,
            "the 1 s job timing out",
        )
        release.set()
        assert await unbounded_job.wait(timeout=10) == "done"
    assert worker._runner is not None
    assert (worker._runner.failed, worker._runner.succeeded) == (1, 1)
