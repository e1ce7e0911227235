"""Dead-worker detection: a consumer whose heartbeat stops has its entries claimed by a live
consumer within the dead-consumer window, long before the lease; its late settlements are stale.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio
from redis_test_support import worker_env

from repid import Connection, Job, Queue, RedisMessageBroker, Router, Worker
from tests.conformance.specs.redis import DSN

pytestmark = pytest.mark.broker("redis")

HERE = Path(__file__).parent


async def _until(condition: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


async def _queue(conn: Connection) -> Queue:
    queue = Queue(f"q_{uuid4().hex[:10]}", _connection=conn)
    await queue.declare()
    return queue


async def test_a_silent_consumers_deliveries_are_claimed_in_the_window_and_its_ack_is_stale(
    connect: Any,
) -> None:
    # Default 30 s lease: only the heartbeat can bring the message back this soon.
    conn = await connect()
    other = await connect()
    queue = await _queue(conn)
    broker: RedisMessageBroker = conn.message_broker
    await Job("slow", queue=queue.name, id_="held", _connection=conn).enqueue()
    silent = broker.get_consumer(queue.name)
    await silent.start()
    (held,) = await silent.fetch(1, 1.0)
    broker.beats.remove(silent)  # its process "dies": no more heartbeats
    stopped = time.monotonic()

    live = other.message_broker.get_consumer(queue.name)
    await live.start()
    try:
        (claimed,) = await asyncio.wait_for(live.fetch(1, 10.0), 15.0)
        waited = time.monotonic() - stopped
        assert claimed.key.id_ == "held"
        assert claimed.redelivered
        assert waited < 4.0, f"claimed after {waited:.2f}s (window 2 s, sweep 0.25 s)"
        assert waited >= 1.5, f"claimed after {waited:.2f}s: before the 2 s window"
        assert await broker.ack(held) is False  # the silent one's settlement is stale
        assert await other.message_broker.ack(claimed) is True
    finally:
        await live.finish()
        await silent.finish()
    counts = await broker.counts(queue.name)
    assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    # The dead consumer is forgotten once it holds nothing.
    client = redis.asyncio.Redis.from_url(DSN)
    try:
        beats = await client.zrange(broker.keys(queue.name)[12], 0, -1)
    finally:
        await client.aclose()
    assert silent.name not in beats
    await queue.delete()


async def test_a_beating_consumer_keeps_its_deliveries_past_the_window(connect: Any) -> None:
    conn = await connect(consumer_heartbeat=0.2, dead_consumer_after=0.8)
    other = await connect(consumer_heartbeat=0.2, dead_consumer_after=0.8)
    queue = await _queue(conn)
    await Job("slow", queue=queue.name, _connection=conn).enqueue()
    owner = conn.message_broker.get_consumer(queue.name)
    await owner.start()
    (held,) = await owner.fetch(1, 1.0)
    live = other.message_broker.get_consumer(queue.name)
    await live.start()
    try:
        # Three windows of fetching find nothing: the owner's heartbeat keeps it.
        assert await live.fetch(1, 2.5) == []
        assert await conn.message_broker.ack(held) is True
    finally:
        await live.finish()
        await owner.finish()
    await queue.delete()


async def test_without_dead_consumer_detection_the_lease_decides(connect: Any) -> None:
    conn = await connect(lease_duration=3.0, dead_consumer_after=None)
    other = await connect(lease_duration=3.0, dead_consumer_after=None)
    queue = await _queue(conn)
    await Job("slow", queue=queue.name, _connection=conn).enqueue()
    silent = conn.message_broker.get_consumer(queue.name)
    await silent.start()
    (held,) = await silent.fetch(1, 1.0)
    fetched = time.monotonic()
    assert not conn.message_broker.beats._consumers  # nothing is beaten for
    live = other.message_broker.get_consumer(queue.name)
    await live.start()
    try:
        (claimed,) = await live.fetch(1, 10.0)
        assert time.monotonic() - fetched >= 2.9  # not before its lease expired
        assert await other.message_broker.ack(claimed) is True
        assert await conn.message_broker.ack(held) is False
    finally:
        await live.finish()
        await silent.finish()
    await queue.delete()


def test_the_window_must_be_longer_than_the_heartbeat() -> None:
    with pytest.raises(ValueError, match="dead_consumer_after"):
        RedisMessageBroker(DSN, consumer_heartbeat=1.0, dead_consumer_after=0.5)


async def test_sigkilled_worker_with_the_default_lease_its_jobs_run_again_within_seconds(
    connect: Any, prefix: str, tmp_path: Path
) -> None:
    conn = await connect()  # the defaults: 30 s lease, 2 s dead-consumer window
    queue = await _queue(conn)
    total = 12
    for n in range(total):
        await Job("work", queue=queue.name, args={"n": n}, _connection=conn).enqueue()

    router = Router()
    done: dict[int, float] = {}

    @router.actor(queue=queue.name)
    async def work(n: int) -> None:
        done[n] = time.monotonic()

    recorder = redis.asyncio.Redis.from_url(DSN)
    started = f"{prefix}started"
    with (tmp_path / "worker.log").open("wb") as log:
        victim = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "redis_worker_app.py"),
            env=worker_env(DSN, prefix, queue.name, REPID_LEASE="30", REPID_SLEEP="60"),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        await _until(lambda: _count(recorder.llen(started), 5), "five starts in the victim", 20)
        victim.send_signal(signal.SIGKILL)
        await asyncio.wait_for(victim.wait(), 10)
        killed_at = time.monotonic()
        taken = {int(n) for n in await recorder.lrange(started, 0, -1)}
    finally:
        if victim.returncode is None:
            victim.kill()
            await asyncio.wait_for(victim.wait(), 10)
        await recorder.aclose()

    worker = Worker([router], handle_signals=[], _connection=conn)
    task = asyncio.create_task(worker.run())
    try:
        await _until(lambda: len(done) == total, "every job to run", 20)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert taken
    assert set(done) == set(range(total))
    again = max(done[n] for n in taken) - killed_at
    assert again < 4.0, f"the killed worker's jobs ran again {again:.2f}s after the kill"
    counts = await conn.message_broker.counts(queue.name)
    assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    await queue.delete()


async def _count(value: Any, wanted: int) -> bool:
    return int(await value) >= wanted
