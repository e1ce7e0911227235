"""Job lifecycle beyond repid 1.6: wait, cancel, snooze, limits, events, drain, worker registry."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import BaseModel

from repid import (
    CancelOutcome,
    ConfigurationError,
    Connection,
    EventKind,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    JobNotFoundError,
    MessageCategory,
    MessageDependency,
    RateLimit,
    Snooze,
)

from .support import (
    WAIT,
    assert_empty,
    browse,
    job,
    make_worker,
    router_for,
    running,
    wait,
    wait_until,
)


def no_backoff(retry_number: int = 1) -> int:
    return 0


# -- waiting for results -----------------------------------------------------------------------


async def test_wait_returns_the_actors_result(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    async with running(make_worker(conn, router)):
        assert await job(conn, "add", queue, args={"a": 2, "b": 3}).enqueue_and_wait(WAIT) == {
            "sum": 5
        }
        pending = await job(conn, "add", queue, args={"a": 1, "b": 1}).enqueue()
        assert await pending.wait(timeout=timedelta(seconds=WAIT)) == {"sum": 2}


async def test_wait_raises_the_final_failure_not_a_retried_one(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[int] = []

    @router.actor(retry_policy=no_backoff)
    async def always_fails() -> None:
        runs.append(1)
        raise LookupError(f"attempt {len(runs)} failed")

    async with running(make_worker(conn, router)):
        with pytest.raises(JobFailedError) as caught:
            await job(conn, "always_fails", queue, retries=2).enqueue_and_wait(WAIT)
    assert len(runs) == 3
    assert caught.value.exception_type == "LookupError"
    assert str(caught.value) == "attempt 3 failed"
    assert caught.value.details is not None
    assert "Traceback" in caught.value.details


async def test_wait_timeout_raises_and_does_not_cancel_the_job(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    release = asyncio.Event()

    @router.actor
    async def gated() -> str:
        await release.wait()
        return "finished"

    async with running(make_worker(conn, router)):
        gated_job = await job(conn, "gated", queue).enqueue()
        with pytest.raises(TimeoutError):
            await gated_job.wait(timeout=0.2)
        release.set()
        assert await gated_job.wait(WAIT) == "finished"


async def test_wait_without_a_results_bucket_is_a_clear_error(conn, new_queue):
    queue = await new_queue()
    bare = Connection(conn.raw_message_broker)  # same broker, no results bucket
    await bare.connect()
    pending = await job(bare, "anything", queue).enqueue()
    with pytest.raises(ConfigurationError, match="results_bucket_broker"):
        await pending.wait(1)
    with pytest.raises(ConfigurationError, match="store_result"):
        await job(conn, "anything", queue, store_result=False).enqueue_and_wait(1)


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_a_queued_job_it_never_runs(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    ran: list[str] = []

    @router.actor
    async def record(tag: str) -> None:
        ran.append(tag)

    doomed = await job(conn, "record", queue, args={"tag": "doomed"}).enqueue()
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    deferred = await job(
        conn, "record", queue, args={"tag": "deferred"}, deferred_until=later
    ).enqueue()
    assert await doomed.cancel() is CancelOutcome.DEQUEUED
    assert await deferred.cancel() is CancelOutcome.DEQUEUED
    await job(conn, "record", queue, args={"tag": "kept"}).enqueue()
    async with running(make_worker(conn, router)):
        await wait_until(lambda: ran == ["kept"], "all runs")
    assert ran == ["kept"]
    await assert_empty(queue)


async def test_cancel_a_running_job_promptly_recorded_as_cancelled_not_retried(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    started = asyncio.Event()
    runs: list[int] = []

    @router.actor(retry_policy=no_backoff)
    async def endless() -> None:
        runs.append(1)
        started.set()
        await asyncio.sleep(3600)

    async with running(make_worker(conn, router)) as task:
        endless_job = await job(conn, "endless", queue, retries=3).enqueue()
        await wait(started, "the actor to start")
        loop = asyncio.get_running_loop()
        asked = loop.time()
        assert await endless_job.cancel() is CancelOutcome.REQUESTED
        with pytest.raises(JobCancelledError):
            await endless_job.wait(WAIT)
        assert loop.time() - asked < 2.0
        assert not task.done()
    assert runs == [1]
    await assert_empty(queue)


async def test_cancel_an_unknown_job_is_a_clear_error(conn, new_queue):
    queue = await new_queue()
    with pytest.raises(JobNotFoundError, match="nope"):
        await job(conn, "whatever", queue, id_="nope").cancel()
    with pytest.raises(JobNotFoundError, match="never enqueued"):
        await job(conn, "whatever", queue).cancel()


# -- snooze -------------------------------------------------------------------------------------


async def test_snooze_defers_without_counting_an_attempt(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    attempts: list[int] = []
    loop = asyncio.get_running_loop()
    times: list[float] = []

    @router.actor
    async def not_yet(message: MessageDependency) -> str:
        attempts.append(message.parameters.attempt)
        times.append(loop.time())
        if len(attempts) < 3:
            raise Snooze(0.2)
        return "done"

    async with running(make_worker(conn, router)) as task:
        assert await job(conn, "not_yet", queue, retries=0).enqueue_and_wait(WAIT) == "done"
        assert not task.done()
    assert attempts == [1, 1, 1]  # snoozes used no attempt (retries=0 would dead-letter)
    assert times[1] - times[0] >= 0.2 - 0.02
    assert await browse(queue, MessageCategory.DEAD) == []


# -- per-actor limits -----------------------------------------------------------------------------


async def test_max_concurrency_bounds_runs_of_one_actor_and_drops_nothing(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    running_now = 0
    peak = 0
    done: list[int] = []

    @router.actor(max_concurrency=2)
    async def limited(n: int) -> None:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.02)
        running_now -= 1
        done.append(n)

    for n in range(8):
        await job(conn, "limited", queue, args={"n": n}).enqueue()
    async with running(make_worker(conn, router, tasks_limit=10)):
        await wait_until(lambda: len(done) == 8, "all 8 runs")
    assert peak == 2
    assert sorted(done) == list(range(8))


async def test_rate_limit_spaces_the_starts(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    loop = asyncio.get_running_loop()
    starts: list[float] = []

    @router.actor(rate_limit=RateLimit(2, per=timedelta(seconds=0.5)))
    async def metered(n: int) -> None:
        starts.append(loop.time())

    for n in range(4):
        await job(conn, "metered", queue, args={"n": n}).enqueue()
    async with running(make_worker(conn, router, tasks_limit=10)) as task:
        await wait_until(lambda: len(starts) == 4, "all 4 starts")
        assert not task.done()
    starts.sort()
    assert starts[2] - starts[0] >= 0.5 - 0.02  # the 3rd start waited for the window
    assert starts[3] - starts[1] >= 0.5 - 0.02


# -- lifecycle events -----------------------------------------------------------------------------


async def test_events_tell_each_step_sync_async_and_broken_handlers(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    sync_seen: list[tuple[str, str, int]] = []
    async_seen: list[EventKind] = []

    def on_sync(event: JobEvent) -> None:
        sync_seen.append((event.kind.value, event.actor, event.attempt))

    async def on_async(event: JobEvent) -> None:
        await asyncio.sleep(0)
        async_seen.append(event.kind)

    def broken(event: JobEvent) -> None:
        raise RuntimeError("a handler bug must not break processing")

    conn.on_event(on_sync)
    conn.on_event(on_async, kinds=[EventKind.SUCCEEDED, "dead_lettered"])
    conn.on_event(broken)
    first = True

    @router.actor(retry_policy=no_backoff)
    async def flaky() -> str:
        nonlocal first
        if first:
            first = False
            raise RuntimeError("first attempt")
        return "ok"

    @router.actor
    async def doomed() -> None:
        raise ValueError("always")

    async with running(make_worker(conn, router)):
        assert await job(conn, "flaky", queue, retries=1).enqueue_and_wait(WAIT) == "ok"
        with pytest.raises(JobFailedError):
            await job(conn, "doomed", queue).enqueue_and_wait(WAIT)
        # A waiter learns the outcome from the stored result, which the worker writes before it
        # acknowledges and emits "succeeded": the last events may still be on their way.
        await wait_until(lambda: len(sync_seen) == 10, "all 10 events")
        await wait_until(lambda: len(async_seen) == 2, "both async events")

    # Each job's worker events come in order; across the two jobs they may interleave. The
    # producer emits "enqueued" once the broker has taken the job, and a fast broker (Postgres
    # with NOTIFY) can hand it to the worker first: "enqueued" comes once, anywhere.
    def events_of(actor: str) -> list[tuple[str, str, int]]:
        mine = [e for e in sync_seen if e[1] == actor]
        assert [e for e in mine if e[0] == "enqueued"] == [("enqueued", actor, 1)], mine
        return [e for e in mine if e[0] != "enqueued"]

    # "retried" is emitted once the requeue is settled, by which time the second attempt may
    # already have started in another lane: it comes once, after the first failure.
    flaky_events = events_of("flaky")
    retried = ("retried", "flaky", 1)
    assert flaky_events.count(retried) == 1, flaky_events
    assert flaky_events.index(retried) > flaky_events.index(("failed", "flaky", 1)), flaky_events
    assert [e for e in flaky_events if e[0] != "retried"] == [
        ("started", "flaky", 1),
        ("failed", "flaky", 1),
        ("started", "flaky", 2),
        ("succeeded", "flaky", 2),
    ]
    assert events_of("doomed") == [
        ("started", "doomed", 1),
        ("failed", "doomed", 1),
        ("dead_lettered", "doomed", 1),
    ]
    assert sorted(async_seen) == sorted([EventKind.SUCCEEDED, EventKind.DEAD_LETTERED])


def test_event_handler_with_a_wrong_signature_is_refused():
    conn = Connection(__import__("repid").InMemoryMessageBroker())
    with pytest.raises(ConfigurationError, match="JobEvent"):
        conn.on_event(lambda: None)  # type: ignore[arg-type, misc]


# -- drain mode, typed inputs, live workers -------------------------------------------------------


async def test_drain_processes_what_is_ready_and_returns(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    ran: list[int] = []

    @router.actor
    async def work(n: int) -> None:
        ran.append(n)

    for n in range(5):
        await job(conn, "work", queue, args={"n": n}).enqueue()
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    await job(conn, "work", queue, args={"n": 99}, deferred_until=later).enqueue()
    runner = await asyncio.wait_for(make_worker(conn, router).run(drain=True), WAIT)
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert runner.processed == 5
    assert len(await browse(queue, MessageCategory.DELAYED)) == 1  # not due: left for later


@dataclasses.dataclass
class Address:
    city: str
    zip_code: str


class Order(BaseModel):
    id: int
    amount: float


async def test_dataclass_and_pydantic_parameters_arrive_validated(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def ship(order: Order, to: Address) -> str:
        assert isinstance(order, Order)
        assert isinstance(to, Address)
        return f"{order.id}:{order.amount:.2f}:{to.city}"

    args = {"order": Order(id=7, amount=9.5), "to": Address("Oslo", "0150")}
    async with running(make_worker(conn, router)):
        assert await job(conn, "ship", queue, args=args).enqueue_and_wait(WAIT) == "7:9.50:Oslo"
        raw = {"order": {"id": "8", "amount": "1"}, "to": {"city": "Rome", "zip_code": "00100"}}
        assert await job(conn, "ship", queue, args=raw).enqueue_and_wait(WAIT) == "8:1.00:Rome"


async def test_live_workers_are_listed_while_running_and_gone_after(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def noop() -> None:
        pass

    async with running(make_worker(conn, router, tasks_limit=7)):
        await _until_listed(conn)
        [info] = [w for w in await conn.live_workers() if queue.name in w.queues]
        assert info.concurrency == 7
        assert info.in_flight == 0
    assert [w for w in await conn.live_workers() if queue.name in w.queues] == []


async def _until_listed(conn: Connection) -> None:
    deadline = asyncio.get_running_loop().time() + WAIT
    while not await conn.live_workers():
        assert asyncio.get_running_loop().time() < deadline, "worker never listed"
        await asyncio.sleep(0.01)
