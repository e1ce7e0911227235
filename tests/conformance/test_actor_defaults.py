"""Per-actor defaults (issue 17): `@router.actor(timeout=..., retries=..., priority=...)` apply
when the Job does not set them; a Job that sets them wins."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from repid import MessageCategory, PrioritiesT, Router, RouterDefaults

from .conftest import require
from .support import browse, job, make_worker, router_for, run_to_limit


def no_backoff(retry_number: int = 1) -> int:
    return 0


async def test_actor_retries_apply_when_the_job_sets_none(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)
    runs: list[str] = []

    @router.actor(retries=2)
    async def flaky(tag: str) -> None:
        runs.append(tag)
        raise RuntimeError("always")

    await job(conn, "flaky", queue, args={"tag": "default"}).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3))
    assert runs == ["default"] * 3, "two retries from the actor"
    assert (runner.retried, runner.dead_lettered) == (2, 1)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.attempts == 3
    await dead.ack()


async def test_a_job_that_sets_retries_wins_even_zero(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)
    runs: list[str] = []

    @router.actor(retries=2)
    async def flaky(tag: str) -> None:
        runs.append(tag)
        raise RuntimeError("always")

    await job(conn, "flaky", queue, args={"tag": "zero"}, retries=0).enqueue()
    await job(conn, "flaky", queue, args={"tag": "one"}, retries=1).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3))
    assert sorted(runs) == ["one", "one", "zero"]
    assert (runner.retried, runner.dead_lettered) == (1, 2)


async def test_actor_timeout_applies_when_the_job_keeps_the_default(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    release = asyncio.Event()

    @router.actor(timeout=timedelta(seconds=1))
    async def hangs() -> None:
        await release.wait()

    await job(conn, "hangs", queue).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1), timeout=10)
    assert runner.failed == 1
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "timeout"
    assert dead.dead_letter.error_message is not None
    assert "0:00:01" in dead.dead_letter.error_message


async def test_a_job_timeout_wins_over_the_actor_timeout(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    started = asyncio.Event()

    @router.actor(timeout=timedelta(seconds=1))
    async def slow() -> str:
        started.set()
        await asyncio.sleep(1.5)  # the work itself takes this long (not a wait for something)
        return "done"

    slow_job = await job(conn, "slow", queue, timeout=timedelta(seconds=30)).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1), timeout=10)
    assert (runner.succeeded, runner.failed) == (1, 0)
    assert await slow_job.wait(timeout=5) == "done"


async def test_actor_priority_applies_when_the_job_sets_none(conn, new_queue):
    require(conn, strict_priorities=True)
    queue = await new_queue()
    router = Router(defaults=RouterDefaults(queue=queue.name, priority=PrioritiesT.LOW))
    order: list[str] = []

    @router.actor  # LOW from the router defaults
    async def background(tag: str) -> None:
        order.append(tag)

    @router.actor(priority=PrioritiesT.HIGH)
    async def urgent(tag: str) -> None:
        order.append(tag)

    await job(conn, "background", queue, args={"tag": "low"}).enqueue()
    await job(conn, "urgent", queue, args={"tag": "medium"}, priority=PrioritiesT.MEDIUM).enqueue()
    await job(conn, "urgent", queue, args={"tag": "high"}).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3, tasks_limit=1))
    assert runner.processed == 3
    assert order == ["high", "medium", "low"], "actor default HIGH, Job's MEDIUM wins, router LOW"
