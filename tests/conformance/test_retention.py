"""Dead-letter retention on every broker: `expire_dead_letters` deletes what died before the
cut-off and keeps the rest; `Worker(dead_letter_ttl=...)` sweeps on its own, one sweep of a
queue at a time across workers; a sweep of a queue that no longer exists ends."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from repid import MessageCategory, Queue
from repid.worker import retention
from repid.worker.retention import RETENTION_QUEUE, expire_dead_letters

from .support import (
    browse,
    consumed,
    job,
    make_worker,
    router_for,
    running,
    wait_until,
)


async def _dead_letters(conn, queue: Queue, count: int) -> list[float]:
    """Dead-letter `count` messages one by one; their death times, in browse order."""
    for n in range(count):
        await job(conn, "x", queue, id_=f"dead-{n}", args={"n": n}).enqueue()
        async with consumed(queue) as (message,):
            await message.nack()
    dead = await browse(queue, MessageCategory.DEAD)
    assert [m.key.id_ for m in dead] == [f"dead-{n}" for n in range(count)], "not in death order"
    times = [m.dead_letter.dead_at for m in dead if m.dead_letter is not None]
    assert len(times) == count
    return times


@pytest.fixture
async def _sweeps_cleaned(conn):
    """The sweep jobs a test left are flushed after it (the last test deletes the queue:
    deleting and declaring a Kafka topic again at once leaves a new worker idle for seconds)."""
    yield
    await conn.raw_message_broker.queue_flush(RETENTION_QUEUE)


async def test_expire_dead_letters_deletes_only_those_dead_before_the_cut_off(conn, new_queue):
    queue = await new_queue()
    times = await _dead_letters(conn, queue, 3)
    assert times[0] < times[1] < times[2]

    # Now is 10 s after the third died; a retention of 10 s + half the gap keeps the third.
    now = times[2] + 10.0
    older_than = now - (times[1] + times[2]) / 2
    assert await expire_dead_letters(conn, queue.name, older_than, now=now) == 2
    assert [m.key.id_ for m in await browse(queue, MessageCategory.DEAD)] == ["dead-2"]
    assert await expire_dead_letters(conn, queue.name, older_than, now=now) == 0
    assert await browse(queue) == []  # nothing was sent back to work


@pytest.mark.usefixtures("_sweeps_cleaned")
async def test_a_worker_with_dead_letter_ttl_deletes_old_dead_letters_by_itself(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor(retries=0)
    async def fails() -> None:
        raise ValueError("always")

    await job(conn, "fails", queue, id_="to-expire", retries=0).enqueue()
    worker = make_worker(conn, router, dead_letter_ttl=0.3, retention_interval=1.0)
    dead: list[str] = []
    async with running(worker):
        deadline = time.monotonic() + 10.0
        while True:  # dead first, then gone; no event for a broker-side state
            ids = [m.key.id_ for m in await browse(queue, MessageCategory.DEAD)]
            if ids:
                dead = ids
            elif dead:
                break
            assert time.monotonic() < deadline, f"dead letters {dead or 'never'} seen, not expired"
            await asyncio.sleep(0.05)
    assert dead == ["to-expire"]
    assert await browse(queue) == []


@pytest.mark.usefixtures("_sweeps_cleaned")
async def test_one_sweep_of_a_queue_runs_at_a_time_across_workers(conn, new_queue, monkeypatch):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def unused() -> None:
        pass

    runs: list[tuple[float, float]] = []
    sweeping = 0
    overlapped = False
    real = retention.expire_dead_letters

    async def recorded(connection, name, older_than, *, now=None):
        nonlocal sweeping, overlapped
        if name != queue.name:
            return await real(connection, name, older_than, now=now)
        sweeping += 1
        overlapped = overlapped or sweeping > 1
        started = time.monotonic()
        try:
            await asyncio.sleep(0.05)  # a sweep that takes a while: room for a second one
            return await real(connection, name, older_than, now=now)
        finally:
            sweeping -= 1
            runs.append((started, time.monotonic()))

    monkeypatch.setattr(retention, "expire_dead_letters", recorded)
    first = make_worker(conn, router, dead_letter_ttl=60.0, retention_interval=1.0)
    second = make_worker(conn, router, dead_letter_ttl=60.0, retention_interval=1.0)
    async with running(first), running(second):
        await wait_until(lambda: len(runs) >= 3, "three sweeps of the queue", timeout=15.0)
    assert not overlapped, runs
    ends = [end for _, end in sorted(runs)]
    starts = [start for start, _ in sorted(runs)]
    assert all(start >= end for start, end in zip(starts[1:], ends, strict=False)), runs


async def test_the_sweep_of_a_deleted_queue_ends(conn, new_queue, caplog, _cleanup):  # noqa: PT019
    caplog.set_level(logging.DEBUG, logger="repid.worker")
    _cleanup.queues.append((conn, RETENTION_QUEUE))
    queue = await new_queue()
    keep = await new_queue()
    router = router_for(keep)

    @router.actor
    async def unused() -> None:
        pass

    await retention.schedule_sweeps(conn, [queue.name], interval=1.0)
    sweeps = Queue(RETENTION_QUEUE, _connection=conn)
    pending = [m.key.id_ for m in await browse(sweeps, MessageCategory.DELAYED)]
    assert f"retention-{queue.name}" in pending
    await queue.delete()

    def lines(name: str) -> list[tuple[int, str]]:
        return [
            (n, r.getMessage())
            for n, r in enumerate(caplog.records)
            if r.getMessage().startswith("retention:") and repr(name) in r.getMessage()
        ]

    def ended_and_keep_swept_twice_since() -> bool:
        ends = [n for n, text in lines(queue.name) if "no longer exists" in text]
        return bool(ends) and len([n for n, _ in lines(keep.name) if n > ends[0]]) >= 2

    async with running(make_worker(conn, router, dead_letter_ttl=60.0, retention_interval=1.0)):
        await wait_until(
            ended_and_keep_swept_twice_since,
            "the sweep of the deleted queue to end while the other queue's goes on",
            timeout=15.0,
        )
    gone = lines(queue.name)
    assert len(gone) == 1, gone  # its last run said it ends; it never ran again
