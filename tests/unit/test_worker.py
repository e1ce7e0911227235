"""`Worker` semantics on the in-memory broker that the broker-parametrised conformance suite does
not cover: routing/registration, limits, thread and process pools, timeouts of stubborn actors,
shutdown edge cases, auto-declaration, the health check endpoint and lane crashes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Annotated

import _process_actors
import pytest
from _worker_helpers import (
    TIMEOUT,
    FlakyBroker,
    dead_letters,
    enqueue_raw,
    http_get_status,
    magic_app,
    messages,
    running,
    wait_until,
)

from repid import (
    Connection,
    Depends,
    HealthCheckServerSettings,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    MessageDependency,
    Queue,
    QueueNotDeclaredError,
    Router,
    RouterDefaults,
    Worker,
)
from repid.data import RetriesProperties

EMPTY = {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
NO_DELAY = RouterDefaults(retry_policy=lambda _n=1: timedelta(0))


@pytest.fixture
def broker() -> InMemoryMessageBroker:
    return InMemoryMessageBroker()


@pytest.fixture
async def conn(broker: InMemoryMessageBroker) -> AsyncIterator[Connection]:
    async with magic_app(broker) as connection:
        await Queue().declare()
        yield connection


def make_worker(**kwargs: object) -> Worker:
    kwargs.setdefault("handle_signals", [])
    return Worker(**kwargs)  # type: ignore[arg-type]


# -- a worker is a router --------------------------------------------------------------------


async def test_worker_is_a_router_with_its_own_actors(conn: Connection) -> None:
    worker = make_worker()
    assert isinstance(worker, Router)
    done = asyncio.Event()

    async def ping() -> None:
        done.set()

    assert worker.actor(ping) is ping
    assert set(worker.actors) == {"ping"}
    await Job("ping").enqueue()
    async with running(worker):
        await asyncio.wait_for(done.wait(), TIMEOUT)


async def test_worker_runs_actors_of_all_its_routers_and_queues(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    mail, billing = Router(), Router(defaults=RouterDefaults(queue="billing"))
    ran: list[str] = []

    @mail.actor
    async def send() -> None:
        ran.append("send")

    @billing.actor
    async def charge() -> None:
        ran.append("charge")

    worker = make_worker(routers=[mail, billing])
    assert worker.queues == ["billing", "default"]
    await Queue("billing").declare()
    await Job("send").enqueue()
    await Job("charge", queue="billing").enqueue()
    async with running(worker):
        await wait_until(lambda: len(ran) == 2, what="both actors")
    assert sorted(ran) == ["charge", "send"]


async def test_later_names_override_earlier_ones(conn: Connection) -> None:
    first, second, third = Router(), Router(), Router()
    ran: list[str] = []

    @first.actor(name="job")
    async def from_first() -> None:
        ran.append("first")

    @second.actor(name="job")
    async def from_second() -> None:
        ran.append("second")

    @third.actor(name="job")
    async def from_third() -> None:
        ran.append("third")

    worker = make_worker(routers=[first, second])
    assert worker.actors["job"].fn is from_second
    worker.include_router(third)
    assert worker.actors["job"].fn is from_third

    @worker.actor(name="job")
    async def from_worker() -> None:
        ran.append("worker")

    assert worker.actors["job"].fn is from_worker
    await Job("job").enqueue()
    async with running(worker):
        await wait_until(lambda: ran == ["worker"], what="the overriding actor")


def test_worker_rejects_bad_limits() -> None:
    with pytest.raises(ValueError, match="graceful_shutdown_time"):
        Worker(graceful_shutdown_time=-1)
    with pytest.raises(ValueError, match="messages_limit"):
        Worker(messages_limit=0)
    with pytest.raises(ValueError, match="tasks_limit"):
        Worker(tasks_limit=0)


def test_worker_defaults() -> None:
    import signal

    worker = Worker()
    assert worker.graceful_shutdown_time == 25.0
    assert worker.tasks_limit == 1000
    assert worker.auto_declare is True
    assert worker.run_health_check_server is False
    assert set(worker.handle_signals) == {signal.SIGINT, signal.SIGTERM}


# -- limits and counters ---------------------------------------------------------------------


async def test_messages_limit_stops_after_exactly_n(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    ran: list[int] = []
    worker = make_worker(messages_limit=3)

    @worker.actor
    async def work(n: int) -> None:
        await asyncio.sleep(0)
        ran.append(n)

    for n in range(10):
        await Job("work", args={"n": n}).enqueue()
    runner = await asyncio.wait_for(worker.run(), TIMEOUT)
    assert runner.processed == 3
    assert runner.succeeded == 3
    assert sorted(ran) == [0, 1, 2]
    assert broker.counts("default") == {**EMPTY, "ready": 7}


async def test_messages_limit_over_several_queues_returns_prefetched_messages(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    ran: list[str] = []
    worker = make_worker(messages_limit=3)

    @worker.actor(queue="a")
    async def on_a() -> None:
        ran.append("a")

    @worker.actor(queue="b")
    async def on_b() -> None:
        ran.append("b")

    await Queue("a").declare()
    await Queue("b").declare()
    for _ in range(5):
        await Job("on_a", queue="a").enqueue()
        await Job("on_b", queue="b").enqueue()
    runner = await asyncio.wait_for(worker.run(), TIMEOUT)
    assert runner.processed == 3
    assert len(ran) == 3
    a, b = broker.counts("a"), broker.counts("b")
    assert a["in_flight"] == b["in_flight"] == 0  # prefetched but not run: given back
    assert a["ready"] + b["ready"] == 7


async def test_processed_counts_every_outcome(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(messages_limit=4, router_defaults=NO_DELAY)

    @worker.actor
    async def ok() -> None:
        pass

    @worker.actor
    async def fails() -> None:
        raise ValueError("boom")

    await Job("ok").enqueue()
    await Job("fails", retries=1).enqueue()  # two messages: the attempt and its retry
    await Job("unknown").enqueue()
    runner = await asyncio.wait_for(worker.run(), TIMEOUT)
    assert runner.processed == 4
    assert runner.succeeded == 1
    assert runner.failed == 2
    assert runner.retried == 1
    assert runner.dead_lettered == 2
    assert broker.counts("default") == {**EMPTY, "dead": 2}


async def test_tasks_limit_one_runs_actors_one_at_a_time(conn: Connection) -> None:
    worker = make_worker(tasks_limit=1, messages_limit=5)
    running_now = 0
    peak = 0
    order: list[int] = []

    @worker.actor
    async def step(n: int) -> None:
        nonlocal running_now, peak
        running_now += 1
        peak = max(peak, running_now)
        for _ in range(3):
            await asyncio.sleep(0)
        order.append(n)
        running_now -= 1

    for n in range(5):
        await Job("step", args={"n": n}).enqueue()
    await asyncio.wait_for(worker.run(), TIMEOUT)
    assert peak == 1
    assert order == [0, 1, 2, 3, 4]  # serial and in queue order


async def test_tasks_limit_bounds_concurrency(conn: Connection) -> None:
    worker = make_worker(tasks_limit=3)
    release = asyncio.Event()
    running_now = 0
    peak = 0
    finished = 0

    @worker.actor
    async def hold() -> None:
        nonlocal running_now, peak, finished
        running_now += 1
        peak = max(peak, running_now)
        await release.wait()
        running_now -= 1
        finished += 1

    for _ in range(7):
        await Job("hold").enqueue()
    async with running(worker):
        await wait_until(lambda: running_now == 3, what="three actors running")
        for _ in range(10):  # give a fourth actor every chance to start
            await asyncio.sleep(0)
        assert running_now == 3
        release.set()
        await wait_until(lambda: finished == 7, what="all actors")
    assert peak == 3


# -- sync actors: thread pool and process pool ------------------------------------------------


async def test_sync_actor_runs_in_a_reused_thread_pool(conn: Connection) -> None:
    worker = make_worker()
    threads: list[tuple[str, int]] = []

    @worker.actor
    def blocking(n: int) -> None:
        current = threading.current_thread()
        threads.append((current.name, current.ident or 0))

    async with running(worker):
        for n in range(3):  # one at a time: an idle pool thread must be reused each time
            await Job("blocking", args={"n": n}).enqueue()
            await wait_until(lambda n=n: len(threads) == n + 1, what=f"job {n}")
        runner = worker._runner
        assert runner is not None
        pool = runner._thread_pool
        await Job("blocking", args={"n": 3}).enqueue()
        await wait_until(lambda: len(threads) == 4, what="job 3")
        assert runner._thread_pool is pool  # the same pool, not one per job
    names = {name for name, _ in threads}
    assert all(name.startswith("repid-actor") for name in names)
    assert len({ident for _, ident in threads}) == 1
    assert threading.main_thread().ident not in {ident for _, ident in threads}


async def test_sync_actors_run_concurrently_in_threads(conn: Connection) -> None:
    worker = make_worker(tasks_limit=4)
    barrier = threading.Barrier(3, timeout=TIMEOUT)
    passed: list[int] = []

    @worker.actor
    def meet(n: int) -> None:
        barrier.wait()  # only returns once three threads are in here at once
        passed.append(n)

    for n in range(3):
        await Job("meet", args={"n": n}).enqueue()
    async with running(worker):
        await wait_until(lambda: len(passed) == 3, what="three concurrent sync actors")


async def test_run_in_process_reuses_a_process_pool() -> None:
    async with magic_app(results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True)):
        await Queue().declare()
        worker = make_worker()
        worker.actor(run_in_process=True)(_process_actors.current_pid)
        worker.actor(run_in_process=True)(_process_actors.multiply)

        async def run_job(job: Job) -> str:
            await job.enqueue()

            async def stored() -> bool:
                return await job.result is not None

            await wait_until(stored, TIMEOUT, f"the result of {job.name}")
            result = await job.result
            assert result is not None
            assert result.success, result.exception
            return result.data

        async with running(worker):
            runner = worker._runner
            assert runner is not None
            first = int(await run_job(Job("current_pid")))
            pool = runner._process_pool
            assert pool is not None
            pool_pids = set(pool._processes)  # type: ignore[attr-defined]
            second = int(await run_job(Job("current_pid")))
            assert await run_job(Job("multiply", args={"a": 6, "b": 7})) == "42"
            assert runner._process_pool is pool  # one pool for the whole run
            assert set(pool._processes) == pool_pids  # type: ignore[attr-defined]
    # Both jobs ran in the pool's long-lived worker processes (a forked pool starts all its
    # workers at once, so the two jobs may land in different ones), never in the worker's own.
    assert {first, second} <= pool_pids
    assert os.getpid() not in {first, second}


def test_async_actor_cannot_run_in_process() -> None:
    router = Router()

    async def not_picklable_coroutine() -> None:
        pass

    with pytest.raises(ValueError, match="run_in_process"):
        router.actor(run_in_process=True)(not_picklable_coroutine)


# -- timeouts --------------------------------------------------------------------------------


async def test_sync_actor_timeout_is_dead_lettered_and_worker_goes_on(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker()
    release = threading.Event()
    entered = threading.Event()
    good = asyncio.Event()

    @worker.actor
    def slow_sync() -> None:
        entered.set()
        release.wait(TIMEOUT)

    @worker.actor
    async def after() -> None:
        good.set()

    try:
        await enqueue_raw(broker, "slow_sync", timeout=0.3)
        async with running(worker):
            await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the timeout")
            assert entered.is_set()
            await Job("after").enqueue()
            await asyncio.wait_for(good.wait(), TIMEOUT)
    finally:
        release.set()  # free the pool thread that nobody can cancel
    [dead] = await dead_letters(conn)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "timeout"
    assert dead.dead_letter.error_type == "TimeoutError"
    assert "slow_sync" in (dead.dead_letter.error_message or "")


async def test_async_actor_that_swallows_cancellation_still_times_out(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(tasks_limit=1)  # one lane: it must survive the swallowed cancel
    swallowed = asyncio.Event()
    good = asyncio.Event()

    @worker.actor
    async def stubborn() -> str:
        try:
            await asyncio.sleep(TIMEOUT * 2)
        except asyncio.CancelledError:
            swallowed.set()
            return "I ignore cancellation"
        return "finished"

    @worker.actor
    async def after() -> None:
        await asyncio.sleep(0)  # the lane must not be cancelled again at its next await
        good.set()

    await enqueue_raw(broker, "stubborn", timeout=0.3)
    await Job("after").enqueue()
    async with running(worker) as task:
        await asyncio.wait_for(good.wait(), TIMEOUT)
    runner = await task
    assert swallowed.is_set()
    assert runner.succeeded == 1
    [dead] = await dead_letters(conn)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "timeout"


async def test_async_actor_turning_cancellation_into_an_error_times_out(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(tasks_limit=1)

    @worker.actor
    async def converts() -> None:
        try:
            await asyncio.sleep(TIMEOUT * 2)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    await enqueue_raw(broker, "converts", timeout=0.3)
    async with running(worker):
        await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the timeout")
    [dead] = await dead_letters(conn)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "timeout"


async def test_timeout_with_retries_counts_attempts(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(router_defaults=NO_DELAY)
    attempts = 0

    @worker.actor
    async def sleepy() -> None:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(TIMEOUT * 2)

    await enqueue_raw(broker, "sleepy", timeout=0.2, retries=RetriesProperties(1, 0))
    async with running(worker) as task:
        await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the dead letter")
    runner = await task
    assert attempts == 2
    assert runner.retried == 1
    [dead] = await dead_letters(conn)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "timeout"
    assert dead.dead_letter.attempts == 2


async def test_sync_job_behind_a_timed_out_one_still_runs(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(tasks_limit=1)
    release = threading.Event()
    ran: list[str] = []

    @worker.actor
    def stuck_sync() -> None:
        release.wait(TIMEOUT)

    @worker.actor
    def quick_sync() -> None:
        ran.append("quick")

    def settled() -> bool:
        return bool(ran) or broker.counts("default")["dead"] >= 2

    try:
        await enqueue_raw(broker, "stuck_sync", timeout=0.3)
        await enqueue_raw(broker, "quick_sync", timeout=0.3)
        async with running(worker):
            await wait_until(lambda: broker.counts("default")["dead"] >= 1, what="the timeout")
            with contextlib.suppress(AssertionError):
                await wait_until(settled, 1.5, "the quick job")
            release.set()  # a fix may also run it once the stuck thread is free
            await wait_until(settled, what="the quick job")
    finally:
        release.set()
    assert ran == ["quick"]
    assert [m.key.topic for m in await dead_letters(conn)] == ["stuck_sync"]


# -- shutdown --------------------------------------------------------------------------------


async def test_graceful_shutdown_zero_returns_running_messages(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(graceful_shutdown_time=0, tasks_limit=2)
    started = 0
    cancelled = 0

    @worker.actor
    async def forever(n: int) -> None:
        nonlocal started, cancelled
        started += 1
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled += 1
            raise

    for n in range(3):
        await Job("forever", args={"n": n}, retries=2).enqueue()
    task = asyncio.create_task(worker.run())
    await wait_until(lambda: started == 2, what="two actors to start")
    worker.stop()
    runner = await asyncio.wait_for(task, TIMEOUT)
    assert cancelled == 2
    assert runner.rejected == 2
    assert runner.failed == 0
    assert runner.retried == 0
    assert broker.counts("default") == {**EMPTY, "ready": 3}
    back = await messages(conn, "default", MessageCategory.NORMAL)
    assert [m.parameters.retries.actual_amount for m in back] == [0, 0, 0]  # no attempt counted


async def test_graceful_shutdown_lets_running_actors_finish(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(graceful_shutdown_time=TIMEOUT, tasks_limit=1)
    started = asyncio.Event()
    finished: list[int] = []

    @worker.actor
    async def short(n: int) -> None:
        started.set()
        for _ in range(5):
            await asyncio.sleep(0.01)
        finished.append(n)

    await Job("short", args={"n": 1}).enqueue()
    await Job("short", args={"n": 2}).enqueue()
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    worker.stop()
    runner = await asyncio.wait_for(task, TIMEOUT)
    assert finished == [1]  # the running one finished; the next one was not taken
    assert runner.succeeded == 1
    assert runner.rejected == 0
    assert broker.counts("default") == {**EMPTY, "ready": 1}


async def test_worker_without_actors_runs_until_stopped(conn: Connection) -> None:
    worker = make_worker()
    async with running(worker) as task:
        done, _ = await asyncio.wait({task}, timeout=0.1)
        assert not done  # nothing to do, but it keeps running
    runner = await task
    assert runner.processed == 0


async def test_stop_requested_right_after_starting_is_not_lost(conn: Connection) -> None:
    worker = make_worker()

    @worker.actor
    async def idle() -> None:
        pass

    task = asyncio.create_task(worker.run())
    worker.stop()
    done, _ = await asyncio.wait({task}, timeout=0.5)
    if not done:
        worker.stop()
        await asyncio.wait_for(task, TIMEOUT)
    assert done


async def test_fractional_messages_limit_does_not_hang(conn: Connection) -> None:
    try:
        worker = make_worker(messages_limit=2.5)
    except ValueError:
        return  # refusing it is a fine answer too

    @worker.actor
    async def tick() -> None:
        pass

    for _ in range(5):
        await Job("tick").enqueue()
    task = asyncio.create_task(worker.run())
    done, _ = await asyncio.wait({task}, timeout=1.0)
    if not done:
        worker.stop()
        await asyncio.wait_for(task, TIMEOUT)
    assert done


async def test_worker_can_run_again_after_stopping(conn: Connection) -> None:
    worker = make_worker(messages_limit=1)
    ran: list[int] = []

    @worker.actor
    async def once(n: int) -> None:
        ran.append(n)

    await Job("once", args={"n": 1}).enqueue()
    await Job("once", args={"n": 2}).enqueue()
    first = await asyncio.wait_for(worker.run(), TIMEOUT)
    second = await asyncio.wait_for(worker.run(), TIMEOUT)
    assert first is not second
    assert (first.processed, second.processed) == (1, 1)
    assert ran == [1, 2]


# -- queue declaration -----------------------------------------------------------------------


async def test_auto_declare_declares_the_actor_queues(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker()

    @worker.actor(queue="fresh_queue")
    async def handler() -> None:
        pass

    assert "fresh_queue" not in broker.queue_names()
    async with running(worker):
        assert "fresh_queue" in broker.queue_names()


async def test_auto_declare_false_does_not_declare(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(auto_declare=False)

    @worker.actor(queue="not_declared")
    async def handler() -> None:
        pass

    with pytest.raises(QueueNotDeclaredError, match="not_declared"):
        await asyncio.wait_for(worker.run(), TIMEOUT)
    assert "not_declared" not in broker.queue_names()

    await Queue("not_declared").declare()  # declared by someone else: the worker runs
    await Job("handler", queue="not_declared").enqueue()
    worker.messages_limit = 1
    runner = await asyncio.wait_for(worker.run(), TIMEOUT)
    assert runner.processed == 1


async def test_prefetched_messages_keep_their_lease_while_lanes_are_busy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = InMemoryMessageBroker(lease_duration=0.3)
    async with magic_app(broker):
        await Queue("slow_q").declare()
        await Queue("fast_q").declare()
        worker = make_worker(tasks_limit=2)
        release = asyncio.Event()
        started = 0
        fast_runs = 0

        @worker.actor(queue="slow_q")
        async def slow() -> None:
            nonlocal started
            started += 1
            await release.wait()

        @worker.actor(queue="fast_q")
        async def fast() -> None:
            nonlocal fast_runs
            fast_runs += 1

        await Job("slow", queue="slow_q").enqueue()
        await Job("slow", queue="slow_q").enqueue()
        with caplog.at_level(logging.WARNING, logger="repid.brokers.in_memory"):
            async with running(worker):
                await wait_until(lambda: started == 2, what="both lanes busy")
                await Job("fast", queue="fast_q").enqueue()  # prefetched, waits for a lane

                def lease_expired() -> bool:
                    return any("expired" in r.getMessage() for r in caplog.records)

                # Busy for several lease durations (this is the scenario, not a sync point).
                with contextlib.suppress(AssertionError):
                    await wait_until(lease_expired, 1.0, "a lease expiry")
                release.set()
                await wait_until(
                    lambda: all(sum(broker.counts(q).values()) == 0 for q in ("slow_q", "fast_q")),
                    what="both queues drained",
                )
    assert fast_runs == 1


# -- health check ----------------------------------------------------------------------------


def health_port(worker: Worker) -> int:
    runner = worker._runner
    assert runner is not None
    assert runner._health is not None
    return runner._health.port


async def test_health_check_answers_200_while_running(conn: Connection) -> None:
    worker = make_worker(
        run_health_check_server=True,
        health_check_server_settings=HealthCheckServerSettings(address="127.0.0.1", port=0),
    )

    @worker.actor
    async def anything() -> None:
        pass

    async with running(worker):
        port = health_port(worker)
        assert await http_get_status(port) == 200
        assert await http_get_status(port, "/elsewhere") == 404
    with pytest.raises(OSError):
        await http_get_status(port)  # closed with the worker


async def test_health_check_reports_broker_outage_and_recovery() -> None:
    broker = FlakyBroker()
    async with magic_app(broker):
        await Queue().declare()
        worker = make_worker(
            tasks_limit=1,
            run_health_check_server=True,
            health_check_server_settings=HealthCheckServerSettings(address="127.0.0.1", port=0),
        )
        done = asyncio.Event()

        @worker.actor
        async def anything() -> None:
            done.set()

        broker.down = True
        async with running(worker):
            port = health_port(worker)
            await wait_until(lambda: broker.failed_consumes >= 1, what="a failed consume")
            assert await http_get_status(port) == 503
            broker.down = False
            await Job("anything").enqueue()
            await asyncio.wait_for(done.wait(), TIMEOUT)

            async def healthy() -> bool:
                return await http_get_status(port) == 200

            await wait_until(healthy, what="the health check to recover")


async def test_health_check_recovers_when_broker_returns_while_idle() -> None:
    broker = FlakyBroker()
    async with magic_app(broker):
        await Queue().declare()
        worker = make_worker(
            tasks_limit=1,
            run_health_check_server=True,
            health_check_server_settings=HealthCheckServerSettings(address="127.0.0.1", port=0),
        )

        @worker.actor
        async def anything() -> None:
            pass

        broker.down = True
        async with running(worker):
            port = health_port(worker)
            await wait_until(lambda: broker.failed_consumes >= 1, what="a failed consume")
            assert await http_get_status(port) == 503
            broker.down = False
            await wait_until(
                lambda: broker.consume_calls > broker.failed_consumes,
                what="a consume call that reached the broker",
            )

            async def healthy() -> bool:
                return await http_get_status(port) == 200

            await wait_until(healthy, 10.0, "the health check to recover")


async def test_an_outage_is_led_by_one_lane_and_the_worker_stays_unhealthy_throughout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1,000 lanes fail at once: one leads (one log line per backoff step), the rest wait."""
    broker = FlakyBroker()
    async with magic_app(broker):
        await Queue().declare()
        worker = make_worker(
            run_health_check_server=True,
            health_check_server_settings=HealthCheckServerSettings(address="127.0.0.1", port=0),
        )
        done = asyncio.Event()

        @worker.actor
        async def anything() -> None:
            done.set()

        broker.down = True
        with caplog.at_level(logging.ERROR, logger="repid.worker"):
            async with running(worker) as task:
                port = health_port(worker)
                runner = worker._runner
                assert runner is not None
                # Five failed probes of the leader: 0.1 + 0.2 + 0.4 + 0.8 + 1.6 s of backoff.
                await wait_until(lambda: broker.failed_consumes >= 1000 + 5, what="probes")
                assert await http_get_status(port) == 503
                assert runner.healthy is False
                broker.down = False
                await Job("anything").enqueue()
                await asyncio.wait_for(done.wait(), TIMEOUT)
                assert runner.healthy is True
                assert await http_get_status(port) == 200
            assert not task.cancelled()
    lines = [r for r in caplog.records if "consuming failed" in r.getMessage()]
    assert 5 <= len(lines) <= 7, [r.getMessage() for r in lines]


# -- crashes ---------------------------------------------------------------------------------


class FatalError(BaseException):
    """Not an `Exception`: not a job failure, it escapes the actor machinery."""


async def test_actor_raising_a_base_exception_is_a_failure_not_a_crash(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker(tasks_limit=2, messages_limit=2)

    @worker.actor
    async def fatal() -> None:
        raise FatalError("escaped")

    @worker.actor
    async def fine() -> None:
        pass

    await Job("fatal").enqueue()
    await Job("fine").enqueue()
    runner = await asyncio.wait_for(worker.run(), TIMEOUT)
    assert runner.succeeded == 1
    dead = [
        m
        async for m in Queue(_connection=conn).get_messages(
            category=MessageCategory.DEAD, stop_when_empty=True
        )
    ]
    assert [m.key.topic for m in dead] == ["fatal"]
    assert dead[0].dead_letter is not None
    assert dead[0].dead_letter.error_type == "FatalError"


async def test_crash_in_a_lane_stops_the_worker_instead_of_hanging(
    conn: Connection, broker: InMemoryMessageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    worker = make_worker(tasks_limit=2, graceful_shutdown_time=1)

    @worker.actor
    async def fine() -> None:
        pass

    async def broken_process(self: object, lane: object, delivery: object) -> None:
        raise FatalError("a bug in repid")  # simulated: escapes the lane

    monkeypatch.setattr("repid.worker.Runner._process", broken_process)
    await Job("fine").enqueue()
    with pytest.raises(RuntimeError, match="crashed") as caught:
        await asyncio.wait_for(worker.run(), TIMEOUT)
    assert isinstance(caught.value.__cause__, FatalError)
    counts = broker.counts("default")
    assert counts["dead"] == 0
    assert counts["ready"] + counts["in_flight"] == 1  # not lost: redelivered after its lease


# -- injection end to end --------------------------------------------------------------------


def tenant_name() -> str:
    return "acme"


async def test_depends_and_message_dependency_are_injected(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    worker = make_worker()
    seen: list[tuple[int, str, str]] = []

    @worker.actor
    async def handle(
        n: int,
        tenant: Annotated[str, Depends(tenant_name)],
        message: MessageDependency,
    ) -> None:
        seen.append((n, tenant, message.key.topic))
        await message.ack()

    await Job("handle", args={"n": 5}).enqueue()
    async with running(worker):
        await wait_until(lambda: len(seen) == 1, what="the actor")
        await wait_until(lambda: broker.counts("default") == EMPTY, what="the ack")
    assert seen == [(5, "acme", "handle")]
