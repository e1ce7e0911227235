"""What only the Redis broker has to prove: crashes, restarts, leases across workers, latency.

The conformance suite (`tests/conformance`, `-k redis`) covers the shared behaviour; these tests
kill worker processes, restart a private `redis-server`, and look at Redis keys directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio
from redis_test_support import RedisServer, make_connection, worker_env

from repid import (
    BrokerUnavailableError,
    Connection,
    Job,
    MessageCategory,
    Queue,
    RedisMessageBroker,
    Router,
    Worker,
)
from repid.lifecycle import RateLimit
from tests.conformance.specs.redis import DSN

pytestmark = pytest.mark.broker("redis")

HERE = Path(__file__).parent
DEADLINE = 20.0


async def until(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not await _truthy(condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _truthy(value: Any) -> bool:
    if asyncio.iscoroutine(value):
        value = await value
    return bool(value)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[asyncio.Task[Any]]:
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        deadline = time.monotonic() + 10
        while not task.done() and time.monotonic() < deadline:
            worker.stop()
            await asyncio.wait({task}, timeout=0.05)
        if not task.done():
            task.cancel()
            raise AssertionError("worker did not stop")
        task.result()


async def new_queue(conn: Connection) -> Queue:
    queue = Queue(f"q_{uuid4().hex[:10]}", _connection=conn)
    await queue.declare()
    return queue


async def test_sigkilled_worker_loses_nothing_another_worker_finishes_after_the_lease(
    connect: Any, prefix: str, tmp_path: Path
) -> None:
    lease = 1.0
    conn = await connect(lease_duration=lease)
    queue = await new_queue(conn)
    total = 20
    for n in range(total):
        await Job("work", queue=queue.name, args={"n": n}, _connection=conn).enqueue()

    recorder = redis.asyncio.Redis.from_url(DSN)
    log = (tmp_path / "worker.log").open("wb")
    victim = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "redis_worker_app.py"),
        env=worker_env(DSN, prefix, queue.name, REPID_LEASE=str(lease), REPID_SLEEP="30"),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        # The victim takes a batch (tasks_limit=5) and is killed while its actors run.
        await until(
            lambda: recorder.llen(f"{prefix}started"), "the worker process to start jobs", 15
        )
        await until(lambda: _at_least(recorder.llen(f"{prefix}started"), 5), "five starts")
        victim.send_signal(signal.SIGKILL)
        await asyncio.wait_for(victim.wait(), 10)
        taken = {int(n) for n in await recorder.lrange(f"{prefix}started", 0, -1)}
    finally:
        if victim.returncode is None:
            victim.kill()
            await asyncio.wait_for(victim.wait(), 10)
        await recorder.aclose()
    killed_at = time.monotonic()

    router = Router()
    done: dict[int, float] = {}

    @router.actor(queue=queue.name)
    async def work(n: int) -> None:
        done[n] = time.monotonic()

    async with running(Worker([router], handle_signals=[], _connection=conn)):
        await until(lambda: len(done) == total, "every job to run")
    assert set(done) == set(range(total)), "jobs were lost"
    assert taken, "the killed worker had taken nothing"
    assert all(done[n] >= killed_at for n in taken)
    counts = await conn.message_broker.counts(queue.name)
    assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    await queue.delete()


async def _at_least(count: Any, wanted: int) -> bool:
    return int(await count) >= wanted


async def test_actor_longer_than_the_lease_is_not_run_by_another_worker(connect: Any) -> None:
    lease = 0.5
    busy_conn = await connect(lease_duration=lease)
    idle_conn = await connect(lease_duration=lease)
    queue = await new_queue(busy_conn)
    runs: list[str] = []
    finished = asyncio.Event()

    def worker_on(conn: Connection, name: str) -> Worker:
        router = Router()

        @router.actor(queue=queue.name)
        async def long() -> None:
            runs.append(name)
            await asyncio.sleep(4 * lease)
            finished.set()

        return Worker([router], handle_signals=[], _connection=conn)

    await Job("long", queue=queue.name, _connection=busy_conn).enqueue()
    async with running(worker_on(busy_conn, "busy")):
        await until(lambda: runs, "the long actor to start")
        async with running(worker_on(idle_conn, "idle")):
            await asyncio.wait_for(finished.wait(), DEADLINE)
            await asyncio.sleep(lease)  # a redelivered copy would start within this
    assert runs == ["busy"]
    await queue.delete()


async def test_deferred_jobs_never_run_early(connect: Any) -> None:
    conn = await connect()
    queue = await new_queue(conn)
    router = Router()
    started: dict[int, float] = {}
    now = datetime.now(tz=UTC)
    dues = {n: now + timedelta(seconds=0.3 + 0.15 * n) for n in range(8)}

    @router.actor(queue=queue.name)
    async def later(n: int) -> None:
        started[n] = time.time()

    for n, due in dues.items():
        await Job(
            "later", queue=queue.name, args={"n": n}, deferred_until=due, _connection=conn
        ).enqueue()
    async with running(Worker([router], handle_signals=[], _connection=conn)):
        await until(lambda: len(started) == len(dues), "every deferred job")
    for n, due in dues.items():
        assert started[n] >= due.timestamp(), f"job {n} ran {due.timestamp() - started[n]}s early"
        assert started[n] < due.timestamp() + 1.0, (
            f"job {n} ran {started[n] - due.timestamp()}s late"
        )
    await queue.delete()


async def test_redis_restarted_mid_run_nothing_lost_and_the_worker_resumes(
    redis_server: RedisServer,
) -> None:
    conn = make_connection(redis_server.dsn, "restart:", lease_duration=2.0)
    await conn.connect()
    queue = await new_queue(conn)
    router = Router()
    done: set[int] = set()

    @router.actor(queue=queue.name)
    async def work(n: int) -> None:
        await asyncio.sleep(0.02)
        done.add(n)

    total = 60
    for n in range(total):
        await Job("work", queue=queue.name, args={"n": n}, _connection=conn).enqueue()
    async with running(Worker([router], tasks_limit=4, handle_signals=[], _connection=conn)):
        await until(lambda: len(done) >= 10, "the first jobs")
        redis_server.restart()
        # Nothing is lost across the restart, and the worker carries on by itself ...
        await until(lambda: len(done) == total, "every job enqueued before the restart")
        # ... and takes new work.
        for n in range(total, total + 5):
            await Job("work", queue=queue.name, args={"n": n}, _connection=conn).enqueue()
        await until(lambda: len(done) == total + 5, "jobs enqueued after the restart")
    await until(
        lambda: _counts_settled(conn, queue.name), "the queue to be empty (acks recorded)", 10
    )
    await conn.disconnect()


async def _counts_settled(conn: Connection, queue: str) -> bool:
    counts = await conn.message_broker.counts(queue)
    return bool(counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0})


async def test_enqueue_raises_broker_unavailable_once_redis_stays_down(
    redis_server: RedisServer,
) -> None:
    broker = RedisMessageBroker(redis_server.dsn, prefix="down:", operation_timeout=0.5)
    conn = Connection(broker)
    await conn.connect()
    queue = await new_queue(conn)
    redis_server.stop()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await Job("x", queue=queue.name, _connection=conn).enqueue()
    elapsed = time.monotonic() - started
    assert 0.4 <= elapsed < 5.0
    await conn.disconnect()


async def test_enqueue_raises_broker_unavailable_when_redis_hangs(
    redis_server: RedisServer,
) -> None:
    broker = RedisMessageBroker(redis_server.dsn, prefix="hung:", operation_timeout=0.5)
    conn = Connection(broker)
    await conn.connect()
    queue = await new_queue(conn)
    assert redis_server.process is not None
    redis_server.process.send_signal(signal.SIGSTOP)  # alive, connected, never answering
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            await Job("x", queue=queue.name, id_="order-1", _connection=conn).enqueue()
        assert time.monotonic() - started < 5.0
    finally:
        redis_server.process.send_signal(signal.SIGCONT)
    # Once Redis answers again, the broker works again. The failed call's command may still have
    # been stored (the server was slow, not down): retrying with the same id adds no duplicate.
    await Job("x", queue=queue.name, id_="order-1", _connection=conn).enqueue()
    assert (await broker.counts(queue.name))["ready"] == 1
    await conn.disconnect()


async def test_idle_worker_starts_a_new_message_within_milliseconds(connect: Any) -> None:
    conn = await connect()
    producer = await connect()
    queue = await new_queue(conn)
    router = Router()
    latencies: list[float] = []
    sent: dict[int, float] = {}
    all_started = asyncio.Event()
    count = 40

    @router.actor(queue=queue.name)
    async def ping(n: int) -> None:
        latencies.append(time.perf_counter() - sent[n])
        if len(latencies) == count:
            all_started.set()

    async with running(Worker([router], tasks_limit=10, handle_signals=[], _connection=conn)):
        await asyncio.sleep(0.3)  # the worker is idle, blocked in XREADGROUP
        for n in range(count):
            sent[n] = time.perf_counter()
            await Job("ping", queue=queue.name, args={"n": n}, _connection=producer).enqueue()
            await asyncio.sleep(0.01)
        await asyncio.wait_for(all_started.wait(), DEADLINE)
    # Generous bounds for a shared CI machine; the benchmark measures the real p99.
    assert statistics.median(latencies) < 0.025, sorted(latencies)
    await queue.delete()


async def test_concurrency_slot_of_a_dead_worker_frees_itself_after_the_lease(
    connect: Any,
) -> None:
    dead = await connect(lease_duration=0.5)
    alive = await connect(lease_duration=0.5)
    held = dead.message_broker.actor_limiter("exclusive", 1, None)
    await held.acquire()  # and its worker "dies": never releases, never renews
    if held._renewal is not None:
        held._renewal.cancel()
    limiter = alive.message_broker.actor_limiter("exclusive", 1, None)
    started = time.monotonic()
    await asyncio.wait_for(limiter.acquire(), 5.0)
    assert time.monotonic() - started >= 0.3, "a held slot was handed out twice"
    limiter.release()


async def test_rate_limit_is_shared_by_two_brokers(connect: Any) -> None:
    first = await connect()
    second = await connect()
    rate = RateLimit(2, timedelta(seconds=0.5))
    limiters = [
        first.message_broker.actor_limiter("paced", None, rate),
        second.message_broker.actor_limiter("paced", None, rate),
    ]
    starts: list[float] = []

    async def take(index: int) -> None:
        await limiters[index % 2].acquire()
        starts.append(time.monotonic())

    await asyncio.gather(*(take(i) for i in range(6)))
    starts.sort()
    for i in range(2, len(starts)):
        assert starts[i] - starts[i - 2] >= 0.45, f"more than 2 starts per 0.5s: {starts}"


async def test_deleting_a_queue_leaves_no_key_behind(connect: Any, prefix: str) -> None:
    conn = await connect()
    queue = await new_queue(conn)
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    await Job("a", queue=queue.name, _connection=conn).enqueue()
    await Job("b", queue=queue.name, deferred_until=later, _connection=conn).enqueue()
    async with contextlib.aclosing(queue.get_messages(stop_when_empty=True)) as messages:
        async for message in messages:
            await message.nack()
    assert len(await _browse(queue, MessageCategory.DEAD)) == 1
    client = redis.asyncio.Redis.from_url(DSN)
    try:
        assert [key async for key in client.scan_iter(match=f"{prefix}{{{queue.name}}}*")]
        await queue.delete()
        left = [key async for key in client.scan_iter(match=f"{prefix}{{{queue.name}}}*")]
    finally:
        await client.aclose()
    assert left == []


async def _browse(queue: Queue, category: MessageCategory) -> list[Any]:
    async with contextlib.aclosing(
        queue.get_messages(category=category, stop_when_empty=True)
    ) as messages:
        return [message async for message in messages]


async def test_foreign_bytes_in_a_stream_are_dead_lettered_with_their_raw_bytes(
    connect: Any, prefix: str
) -> None:
    conn = await connect()
    queue = await new_queue(conn)
    broker = conn.message_broker
    client = redis.asyncio.Redis.from_url(DSN)
    try:  # another program writes to the queue's MEDIUM stream
        await client.xadd(broker.keys(queue.name)[1], {"m": b"\xffnot json"})
    finally:
        await client.aclose()
    router = Router()

    @router.actor(queue=queue.name)
    async def anything() -> None:
        raise AssertionError("an undecodable message reached an actor")

    worker = Worker([router], messages_limit=1, handle_signals=[], _connection=conn)
    runner = await asyncio.wait_for(worker.run(), DEADLINE)
    assert runner.dead_lettered == 1
    (dead,) = await _browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "decode_error"
    assert dead.delivery.raw == b"\xffnot json"
    await queue.delete()


async def test_background_loops_stop_with_the_broker(connect: Any) -> None:
    conn = await connect(lease_duration=0.3)
    broker = conn.message_broker
    watchdog = broker.link._watchdog
    assert watchdog is not None
    assert not watchdog.done()
    limiter = broker.actor_limiter("looped", 1, None)
    await limiter.acquire()
    renewal = limiter._renewal
    assert renewal is not None
    assert not renewal.done()
    limiter.release()  # nothing held: the renewal loop ends by itself
    await asyncio.wait_for(renewal, 2.0)
    await conn.disconnect()
    assert watchdog.done()


async def test_a_cancel_request_ends_with_its_job(connect: Any) -> None:
    conn = await connect()
    queue = await new_queue(conn)
    broker = conn.message_broker
    await Job("slow", queue=queue.name, id_="job-7", _connection=conn).enqueue()
    consumer = broker.get_consumer(queue.name)
    await consumer.start()
    try:
        (delivery,) = await consumer.fetch(1, 1.0)
        assert await broker.cancel(queue.name, "job-7") == "requested"
        assert await broker.cancelled_ids(["job-7", "other"]) == {"job-7"}
        # The job finished before its worker saw the request: the request goes with it, so
        # a later job with the same id is not cancelled.
        assert await broker.ack(delivery) is True
        assert await broker.cancelled_ids(["job-7"]) == set()
    finally:
        await consumer.finish()
    await queue.delete()
