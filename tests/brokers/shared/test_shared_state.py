"""`RedisSharedState`: what RabbitMQ and Kafka share through Redis when paired with it.

Two broker (or state) objects stand for two processes: everything that is not shared lives in
the broker object. The multi-process behaviour itself is covered by
`test_multiprocess_lifecycle.py`; here are the parts that need control over timing.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any
from uuid import uuid4

import pytest

from repid import (
    CancelOutcome,
    Connection,
    Job,
    JobCancelledError,
    Queue,
    RedisBucketBroker,
    RedisMessageBroker,
    Router,
    Worker,
)
from repid.brokers.base import Delivery
from repid.brokers.kafka.broker import KafkaMessageBroker
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from repid.data import Parameters, RoutingKey, TimerProperties
from repid.errors import ConfigurationError
from repid.lifecycle import WorkerInfo
from repid.state.redis import ANSWER_WITHIN, RedisSharedState
from tests.conformance.specs import RUN_ID
from tests.conformance.specs.redis import cleanup_redis_keys

REDIS = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
RABBITMQ = os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/")
KAFKA = os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
DEADLINE = 15.0


async def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    """A key prefix of the test's own; its keys are deleted afterwards."""
    name = f"st-{RUN_ID}-{uuid4().hex[:8]}:"
    yield name
    cleanup_redis_keys(REDIS, name)


@pytest.fixture
async def states(prefix: str) -> AsyncIterator[tuple[RedisSharedState, RedisSharedState]]:
    """Two processes' state objects on one prefix."""
    first, second = RedisSharedState(REDIS, prefix=prefix), RedisSharedState(REDIS, prefix=prefix)
    await first.connect()
    await second.connect()
    try:
        yield first, second
    finally:
        await first.disconnect()
        await second.disconnect()


def _delivery(queue: str, id_: str, created: float) -> Delivery:
    timer = TimerProperties(datetime.fromtimestamp(created, tz=UTC))
    return Delivery(RoutingKey(id_, "actor", queue), "", Parameters(timer=timer), None)


async def test_a_user_id_is_claimed_by_one_process_and_freed_by_the_settlement(
    states: tuple[RedisSharedState, RedisSharedState],
) -> None:
    first, second = states
    now = time.time()
    claims = await asyncio.gather(*(s.claim("q", "order-1", now, None) for s in (first, second)))
    assert sorted(claims) == [False, True]  # atomic: exactly one process enqueues it
    await second.renew("q", "order-1", now, now + 60)  # a retry keeps it pending
    assert await first.is_pending("q", "order-1")
    first.release("q", "order-1")  # sent with the other releases of this loop step
    await _until(lambda: not first._releases, "the release to leave")
    await asyncio.gather(*first._tasks)
    assert not await second.is_pending("q", "order-1")
    assert await second.claim("q", "order-1", time.time(), None)


async def test_cancel_of_an_unknown_id_answers_none_and_leaves_nothing(
    states: tuple[RedisSharedState, RedisSharedState],
) -> None:
    first, _ = states
    assert await first.cancel("q", "nope", None) is None
    assert await first.link.call("HLEN", first._cancels) == 0
    assert first.flags == {}
    assert first.tombstones == {}


async def test_a_waiting_job_cancelled_in_one_process_is_dropped_by_every_other(
    states: tuple[RedisSharedState, RedisSharedState],
) -> None:
    first, second = states
    created = time.time()
    assert await first.claim("q", "report", created, None)
    asked = time.monotonic()
    assert await first.cancel("q", "report", None) == "dequeued"
    assert time.monotonic() - asked < 0.3  # no live worker: no wait for an answer
    assert not await first.is_pending("q", "report")  # the id can be enqueued again
    await second.refresh()  # what the other process's poller does every `poll_interval`
    assert ("q", "report") in second.tombstones
    assert second.take_tombstone(_delivery("q", "report", time.time() + 5)) is False  # newer
    assert second.take_tombstone(_delivery("other", "report", created)) is False
    assert second.take_tombstone(_delivery("q", "report", created)) is True
    await asyncio.gather(*second._tasks)  # the drop clears the tombstone and the flag
    assert await first.link.call("HLEN", first._cancels) == 0
    await first.refresh()
    assert first.tombstones == {}
    assert first.flags == {}


async def test_concurrency_slots_and_the_registry_are_the_redis_brokers(
    states: tuple[RedisSharedState, RedisSharedState], prefix: str
) -> None:
    first, second = states
    held = first.actor_limiter("exclusive", 1, None)
    other = second.actor_limiter("exclusive", 1, None)
    await held.acquire()
    waiting = asyncio.create_task(other.acquire())
    done, _ = await asyncio.wait({waiting}, timeout=0.3)
    assert not done, "a second process took the only slot"
    held.release()
    await asyncio.wait_for(waiting, DEADLINE)
    other.release()

    info = WorkerInfo("w1", "host", 42, ("q",), 10, 3, time.time() - 5, time.time())
    await first.heartbeat(info)
    broker = RedisMessageBroker(REDIS, prefix=prefix)  # reads the same record format
    await broker.connect()
    try:
        assert await broker.live_workers() == [info]
        assert await second.live_workers() == [info]
        await second.unregister_worker("w1")
        assert await first.live_workers() == []
    finally:
        await broker.disconnect()


def test_kafka_takes_unique_ids_or_shared_state_not_both() -> None:
    with pytest.raises(ConfigurationError, match="not both"):
        KafkaMessageBroker(
            KAFKA, unique_ids=RedisBucketBroker(REDIS), shared_state=RedisSharedState(REDIS)
        )


# -- a cancel racing with the start, on the real brokers ------------------------------------------


def _connection(kind: str, prefix: str, poll_interval: float) -> Connection:
    state = RedisSharedState(REDIS, prefix=prefix, poll_interval=poll_interval)
    broker: Any
    if kind == "rabbitmq":
        broker = RabbitMessageBroker(RABBITMQ, prefix=prefix, shared_state=state)
    else:
        broker = KafkaMessageBroker(
            KAFKA, topic_prefix=prefix.replace(":", "-"), shared_state=state, timeout=5.0
        )
    assert broker.capabilities.shared_state
    results = RedisBucketBroker(REDIS, prefix=prefix, use_result_bucket=True)
    return Connection(broker, results_bucket_broker=results)


@pytest.mark.parametrize("kind", ["rabbitmq", "kafka"])
async def test_a_cancel_racing_with_the_start_cancels_the_job_as_running(
    kind: str, prefix: str
) -> None:
    """`cancel()` waits at most half a second for every process to read the cancellation. A
    process that reads it later (here: never polls by itself) may hand the job out meanwhile;
    the job starts, and is cancelled as a running job once the process reads it (recorded,
    not retried)."""
    worker_conn = _connection(kind, prefix, poll_interval=3600.0)  # stale after connect
    producer = _connection(kind, prefix, poll_interval=0.1)
    await worker_conn.connect()
    await producer.connect()
    queue = Queue(f"race_{uuid4().hex[:8]}", _connection=producer)
    await queue.declare()
    router = Router()
    started, finished = asyncio.Event(), asyncio.Event()
    runs: list[int] = []

    @router.actor(queue=queue.name, retry_policy=lambda retry_number=1: 0)
    async def slow() -> None:
        runs.append(1)
        started.set()
        await asyncio.sleep(3600)
        finished.set()

    worker = Worker(
        routers=[router], _connection=worker_conn, handle_signals=None, heartbeat_interval=0.2
    )
    task = asyncio.create_task(worker.run())
    try:
        job = await Job("slow", queue=queue.name, retries=3, _connection=producer).enqueue()
        outcome = await job.cancel()
        await asyncio.wait_for(started.wait(), DEADLINE)  # the worker had not heard of it
        # Known waiting, not answered by a worker (its process has not polled yet).
        assert outcome is CancelOutcome.DEQUEUED
        state: RedisSharedState = getattr(worker_conn.raw_message_broker, "_state")  # noqa: B009
        await state.refresh()  # the worker process's next poll
        with pytest.raises(JobCancelledError):
            await job.wait(DEADLINE)
        await _until(lambda: not state.flags, "the cancellation to be cleared")
        assert not finished.is_set()
        assert runs == [1]
        assert await state.link.call("HLEN", state._cancels) == 0
    finally:
        worker.stop()
        await asyncio.wait_for(task, DEADLINE)
        await queue.delete()
        await producer.disconnect()
        await worker_conn.disconnect()


# -- answers: who runs or has just finished the job ------------------------------------------------


async def test_a_process_running_the_job_answers_requested(
    states: tuple[RedisSharedState, RedisSharedState],
) -> None:
    worker_side, canceller = states
    worker_side.running = lambda id_: id_ == "busy"  # what the broker tells its state
    assert await canceller.cancel("q", "busy", None) == "requested"
    assert worker_side.cancelled(["busy", "idle"]) == {"busy"}  # what its workers stop


async def test_a_job_that_finished_during_the_cancel_is_not_found(
    states: tuple[RedisSharedState, RedisSharedState],
) -> None:
    worker_side, canceller = states
    worker_side.settled("done-just-now")
    assert await canceller.cancel("q", "done-just-now", time.time() - 1) is None
    assert await canceller.link.call("HLEN", canceller._cancels) == 0  # nothing left behind


async def test_cancel_waits_half_a_second_at_most_for_a_process_that_does_not_read(
    states: tuple[RedisSharedState, RedisSharedState], prefix: str
) -> None:
    _, canceller = states
    stuck = RedisSharedState(REDIS, prefix=prefix, poll_interval=3600.0)
    await stuck.connect()  # registered as a reader, then never reads again
    try:
        asked = time.monotonic()
        assert await canceller.cancel("q", "waiting", time.time() - 1) == "dequeued"
        waited = time.monotonic() - asked
        assert ANSWER_WITHIN <= waited < ANSWER_WITHIN + 1.0
        await stuck.refresh()  # once it reads, it drops the job
        assert stuck.take_tombstone(_delivery("q", "waiting", time.time() - 1))
    finally:
        await stuck.disconnect()


async def test_a_flag_left_behind_does_not_cancel_a_later_job_reusing_the_id(
    states: tuple[RedisSharedState, RedisSharedState], prefix: str
) -> None:
    """A flag stays when a process did not read the cancellation in time. A process that
    reads it while not running the job ignores it for later runs of that id, which are new
    jobs; a new `cancel` of the id while it runs there does stop it."""
    canceller, worker_side = states
    stuck = RedisSharedState(REDIS, prefix=prefix, poll_interval=3600.0)
    await stuck.connect()  # a live reader that does not read in time: the flag stays
    try:
        assert await canceller.cancel("q", "reused", time.time() - 1) == "dequeued"
        await worker_side.refresh()
        assert "reused" in worker_side.flags  # left behind
        worker_side.running = lambda id_: id_ == "reused"  # a new job with that id starts
        assert worker_side.cancelled(["reused"]) == set()
        # A cancel of the new job: the process running it answers and stops it.
        assert await canceller.cancel("q", "reused", None) == "requested"
        assert worker_side.cancelled(["reused"]) == {"reused"}
    finally:
        await stuck.disconnect()
