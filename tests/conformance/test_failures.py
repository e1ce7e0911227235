"""What happens when an actor fails: retries, dead letters with the error, timeouts, bad input."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from repid import MessageCategory, MessageTooLargeError

from .support import assert_empty, browse, job, make_worker, router_for, run_to_limit, running, wait


def no_backoff(retry_number: int = 1) -> int:
    return 0


async def test_failing_twice_then_succeeding_with_two_retries_ends_acked(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[int] = []

    @router.actor(retry_policy=no_backoff)
    async def flaky() -> str:
        runs.append(len(runs) + 1)
        if len(runs) <= 2:
            raise RuntimeError(f"failure {len(runs)}")
        return "ok"

    flaky_job = await job(conn, "flaky", queue, retries=2).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3))

    assert runs == [1, 2, 3]
    assert (runner.failed, runner.retried, runner.succeeded, runner.dead_lettered) == (2, 2, 1, 0)
    result = await flaky_job.result
    assert result is not None
    assert result.success is True
    await assert_empty(queue)


async def test_retry_policy_delay_is_respected(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    started: list[float] = []
    second = asyncio.Event()
    loop = asyncio.get_running_loop()

    @router.actor(retry_policy=lambda n=1: timedelta(seconds=0.5))
    async def flaky() -> None:
        started.append(loop.time())
        if len(started) == 1:
            raise RuntimeError("first attempt fails")
        second.set()

    await job(conn, "flaky", queue, retries=1).enqueue()
    async with running(make_worker(conn, router)):
        await wait(second, "the retry")
    assert started[1] - started[0] >= 0.5 - 0.01


async def test_exhausted_retries_dead_letter_with_the_error(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[None] = []

    @router.actor(retry_policy=no_backoff)
    async def always_broken() -> None:
        runs.append(None)
        raise RuntimeError("broken for good")

    await job(conn, "always_broken", queue, retries=2).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3))

    assert len(runs) == 3
    assert runner.dead_lettered == 1
    (dead,) = await browse(queue, MessageCategory.DEAD)
    info = dead.dead_letter
    assert info is not None
    assert info.reason == "exception"
    assert info.error_type == "RuntimeError"
    assert info.error_message == "broken for good"
    assert info.traceback is not None
    assert "RuntimeError: broken for good" in info.traceback
    assert "always_broken" in info.traceback
    assert info.attempts == 3
    assert dead.key.topic == "always_broken"
    await assert_empty(queue, [MessageCategory.NORMAL, MessageCategory.DELAYED])


async def test_timeout_dead_letters_with_reason_timeout(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    never = asyncio.Event()
    cancelled = asyncio.Event()

    @router.actor
    async def hangs() -> None:
        try:
            await never.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    await job(conn, "hangs", queue, timeout=timedelta(seconds=1)).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1), timeout=5.0)

    assert cancelled.is_set(), "the actor was not cancelled at its timeout"
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "timeout"
    assert dead.dead_letter.error_type == "TimeoutError"
    assert dead.dead_letter.attempts == 1


async def test_timeout_counts_an_attempt_and_retries(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)
    attempts: list[int] = []
    never = asyncio.Event()

    @router.actor
    async def slow_then_fast() -> None:
        attempts.append(len(attempts) + 1)
        if len(attempts) == 1:
            await never.wait()

    await job(conn, "slow_then_fast", queue, retries=1, timeout=timedelta(seconds=1)).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=2), timeout=5.0)
    assert attempts == [1, 2]
    assert (runner.failed, runner.retried, runner.succeeded) == (1, 1, 1)
    await assert_empty(queue)


async def test_invalid_args_dead_letter_without_retries(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)
    runs: list[int] = []

    @router.actor
    async def typed(n: int) -> None:
        runs.append(n)

    await job(conn, "typed", queue, retries=3, args={"n": "not a number"}).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert runs == []
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "validation_error"
    assert dead.dead_letter.attempts == 1
    await assert_empty(queue, [MessageCategory.NORMAL, MessageCategory.DELAYED])


async def test_job_without_an_actor_in_the_worker_is_dead_lettered(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def known() -> None:
        pass

    await job(conn, "unknown", queue).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.key.topic == "unknown"
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "unknown_actor"


async def test_dead_letter_requeued_with_retry_runs_again(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[int] = []

    @router.actor
    async def fails_once(n: int) -> None:
        runs.append(n)
        if len(runs) == 1:
            raise RuntimeError("first run fails")

    await job(conn, "fails_once", queue, args={"n": 9}).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    (dead,) = await browse(queue, MessageCategory.DEAD)

    await dead.retry(revive=True)
    assert dead.read_only
    assert await browse(queue, MessageCategory.DEAD) == []
    (revived,) = await browse(queue)
    assert revived.parameters.retries.actual_amount == 0
    assert revived.dead_letter is None

    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert runs == [9, 9]
    await assert_empty(queue)


async def test_unserialisable_args_fail_at_enqueue_naming_the_argument(conn, new_queue):
    queue = await new_queue()
    with pytest.raises((TypeError, ValueError), match="not_json"):
        await job(conn, "x", queue, args={"fine": 1, "not_json": object()}).enqueue()
    await assert_empty(queue)


async def test_message_over_the_broker_limit_fails_at_enqueue(conn, new_queue):
    limit = conn.message_broker.capabilities.max_message_size
    if limit is None:
        pytest.skip("broker declares max_message_size=None (no limit)")
    queue = await new_queue()
    with pytest.raises(MessageTooLargeError):
        await job(conn, "x", queue, args={"blob": "x" * (limit + 1)}).enqueue()
    await assert_empty(queue)
