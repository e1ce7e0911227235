"""Getting a job to its actor: arguments, priorities, schedules, unique ids, ttl, results."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from uuid import uuid4

from repid import (
    Job,
    MessageCategory,
    PrioritiesT,
    Queue,
    Repid,
    Router,
    RouterDefaults,
    Worker,
)

from .conftest import require
from .support import (
    assert_empty,
    browse,
    job,
    make_worker,
    router_for,
    run_to_limit,
    running,
    wait,
)


async def test_worker_runs_actor_with_validated_args(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    received: list[tuple[object, object]] = []

    @router.actor
    async def add(a: int, b: float) -> None:
        received.append((a, b))

    await job(conn, "add", queue, args={"a": "5", "b": 2}).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert received == [(5, 2.0)]
    assert type(received[0][0]) is int
    assert type(received[0][1]) is float
    assert runner.processed == 1
    await assert_empty(queue)


async def test_magic_connection_is_the_default_of_job_queue_and_worker(conn):
    name = f"q_{uuid4().hex[:10]}"
    router = Router(defaults=RouterDefaults(queue=name))
    received: list[str] = []

    @router.actor
    async def greet(name: str) -> None:
        received.append(name)

    async with Repid(conn).magic():
        queue = Queue(name)
        await queue.declare()
        try:
            await Job("greet", queue=name, args={"name": "x"}).enqueue()
            worker = Worker([router], messages_limit=1, handle_signals=[])
            await run_to_limit(worker)
        finally:
            await queue.delete()
    assert received == ["x"]


async def test_priorities_high_before_medium_before_low(conn, new_queue):
    require(conn, strict_priorities=True)
    queue = await new_queue()
    router = router_for(queue)
    order: list[str] = []

    @router.actor
    async def record(tag: str) -> None:
        order.append(tag)

    plan = [
        ("low-1", PrioritiesT.LOW),
        ("medium-1", PrioritiesT.MEDIUM),
        ("high-1", PrioritiesT.HIGH),
        ("low-2", PrioritiesT.LOW),
        ("high-2", PrioritiesT.HIGH),
    ]
    for tag, priority in plan:
        await job(conn, "record", queue, priority=priority, args={"tag": tag}).enqueue()
    await run_to_limit(make_worker(conn, router, tasks_limit=1, messages_limit=len(plan)))

    assert [tag.split("-")[0] for tag in order] == ["high", "high", "medium", "low", "low"]


async def test_fifo_within_a_priority(conn, new_queue):
    require(conn, per_partition_order=False)
    queue = await new_queue()
    router = router_for(queue)
    order: list[int] = []

    @router.actor
    async def record(n: int) -> None:
        order.append(n)

    for n in range(5):
        await job(conn, "record", queue, args={"n": n}).enqueue()
    await run_to_limit(make_worker(conn, router, tasks_limit=1, messages_limit=5))
    assert order == [0, 1, 2, 3, 4]


async def test_deferred_until_never_runs_early(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    started: list[float] = []
    ran = asyncio.Event()

    @router.actor
    async def later() -> None:
        started.append(time.time())
        ran.set()

    due = datetime.now(tz=UTC) + timedelta(seconds=1)
    deferred = job(conn, "later", queue, deferred_until=due)
    assert deferred.is_deferred
    await deferred.enqueue()

    delayed = await browse(queue, MessageCategory.DELAYED)
    assert [m.key.topic for m in delayed] == ["later"]
    assert await browse(queue) == []  # not ready yet

    async with running(make_worker(conn, router)):
        await wait(ran, "the deferred job to run")
    assert len(started) == 1
    assert started[0] >= due.timestamp(), f"ran {due.timestamp() - started[0]:.3f}s early"
    assert started[0] < due.timestamp() + 2.0


async def test_deferred_by_recurs_at_its_interval(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    starts: list[float] = []
    twice = asyncio.Event()

    @router.actor
    async def tick() -> None:
        starts.append(time.time())
        if len(starts) >= 2:
            twice.set()

    interval = 1.0
    enqueued_at = time.time()
    await job(conn, "tick", queue, deferred_by=timedelta(seconds=interval)).enqueue()
    async with running(make_worker(conn, router)):
        await wait(twice, "two runs of a recurring job", timeout=2 * interval + 3)
    first, second = starts[:2]
    assert first >= enqueued_at + interval - 0.01, "first tick ran early"
    assert second >= enqueued_at + 2 * interval - 0.01, "second tick ran early"
    assert second - first >= interval * 0.9
    # The job is rescheduled, not consumed: its next tick is waiting.
    assert [m.key.topic for m in await browse(queue, MessageCategory.DELAYED)] == ["tick"]


async def test_unique_id_is_not_duplicated_while_pending(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[int] = []

    @router.actor
    async def once(n: int) -> None:
        runs.append(n)

    first = job(conn, "once", queue, id_="unique-1", args={"n": 1})
    assert first.is_unique
    await first.enqueue()
    await job(conn, "once", queue, id_="unique-1", args={"n": 2}).enqueue()

    pending = await browse(queue)
    assert [m.key.id_ for m in pending] == ["unique-1"]
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert runs == [1]
    await assert_empty(queue)

    # Once settled the id is free again.
    await job(conn, "once", queue, id_="unique-1", args={"n": 3}).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert runs == [1, 3]


async def test_unique_id_of_a_delayed_job_is_not_duplicated(conn, new_queue):
    queue = await new_queue()
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    await job(conn, "nothing", queue, id_="unique-d", deferred_until=later).enqueue()
    await job(conn, "nothing", queue, id_="unique-d").enqueue()
    assert [m.key.id_ for m in await browse(queue, MessageCategory.DELAYED)] == ["unique-d"]
    assert await browse(queue) == []


async def test_ttl_expired_before_start_is_dead_lettered(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    runs: list[None] = []

    @router.actor
    async def stale() -> None:
        runs.append(None)

    await job(conn, "stale", queue, ttl=timedelta(seconds=1)).enqueue()
    await asyncio.sleep(1.1)  # the message ages past its ttl before any worker runs
    await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert runs == []
    dead = await browse(queue, MessageCategory.DEAD)
    assert len(dead) == 1
    assert dead[0].dead_letter is not None
    assert dead[0].dead_letter.reason == "expired"


async def test_result_of_a_successful_run_is_stored(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def square(x: int) -> dict[str, int]:
        return {"square": x * x}

    before = time.time_ns()
    squared = await job(conn, "square", queue, args={"x": 7}).enqueue()
    assert await squared.result is None  # not run yet
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    after = time.time_ns()

    result = await squared.result
    assert result is not None
    assert result.success is True
    assert json.loads(result.data) == {"square": 49}
    assert result.exception is None
    assert before <= result.started_when <= result.finished_when <= after


async def test_result_of_a_failed_run_has_the_exception(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def explode() -> None:
        raise ValueError("kaboom-42")

    exploded = await job(conn, "explode", queue).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))

    result = await exploded.result
    assert result is not None
    assert result.success is False
    assert (result.data, result.exception, result.exception_type) == (
        "kaboom-42",
        "ValueError",
        "ValueError",
    )
    assert result.traceback is not None
    assert "ValueError: kaboom-42" in result.traceback


async def test_no_result_is_stored_when_not_asked(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def quiet() -> int:
        return 1

    silent = await job(conn, "quiet", queue, store_result=False).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert await silent.result is None


async def test_args_bucket_round_trip(make_conn, new_queue):
    conn = await make_conn(args_bucket=True)
    queue = await new_queue(conn)
    router = router_for(queue)
    received: list[dict[str, object]] = []

    @router.actor
    async def big(blob: str, items: list[int], meta: dict[str, str]) -> None:
        received.append({"blob": blob, "items": items, "meta": meta})

    args = {"blob": "x" * 10_000, "items": [1, 2, 3], "meta": {"k": "v"}}
    await job(conn, "big", queue, args=args).enqueue()

    (message,) = await browse(queue)
    assert message.raw_payload == ""  # the arguments travel in the bucket, not the message
    assert message.parameters.args_id is not None
    assert await conn.args_bucket_broker.get_bucket(message.parameters.args_id) is not None

    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert received == [args]


async def test_jitter_moves_each_run_of_a_recurring_job_and_keeps_its_phase(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    ran = asyncio.Event()
    starts: list[float] = []

    @router.actor
    async def spread() -> None:
        starts.append(time.time())
        ran.set()

    interval, jitter = timedelta(seconds=2), timedelta(seconds=1)
    await job(conn, "spread", queue, deferred_by=interval, jitter=jitter).enqueue()
    [first] = await browse(queue, MessageCategory.DELAYED)
    delay = first.parameters.delay
    assert delay.jitter == jitter  # kept by the broker
    assert 0.0 <= delay.jitter_offset < 1.0
    assert delay.next_execution_time is not None
    tick = delay.next_execution_time.timestamp() - delay.jitter_offset

    async with running(make_worker(conn, router)):
        await wait(ran, "the first run of a jittered recurring job", timeout=6)
    # the worker has stopped, so the run is settled: its next run is scheduled
    [following] = await browse(queue, MessageCategory.DELAYED)
    assert starts[0] >= delay.next_execution_time.timestamp() - 0.01, "ran before its moved time"
    nxt = following.parameters.delay
    assert nxt.jitter == jitter
    assert 0.0 <= nxt.jitter_offset < 1.0
    assert nxt.next_execution_time is not None
    # the run is moved from the tick after the first one: the interval's phase did not drift
    assert abs(nxt.next_execution_time.timestamp() - nxt.jitter_offset - (tick + 2.0)) < 0.01
