"""Code written for repid 1.6 (issue 16): what actors receive, what a failure stores, and how
`worker.run()` reacts to cancellation and signals — on every broker where a broker is involved.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from pydantic import BaseModel

from repid import Connection, Job, JobFailedError, Queue, Repid, ResultBucket, Router, Worker

RUN = 20.0
"""Seconds a worker run may take before the test fails."""


@pytest.fixture
async def q(conn: Connection, new_queue) -> AsyncIterator[Queue]:  # type: ignore[no-untyped-def]
    """A declared queue on the broker under test, with `conn` as the default connection."""
    queue: Queue = await new_queue()
    Repid.set_magic_connection(conn)
    yield Queue(queue.name)
    Repid.set_magic_connection(None)


class Order(BaseModel):
    order_id: int
    amount: float


@dataclasses.dataclass
class Refund:
    order_id: int
    reason: str


async def _run_one(router: Router) -> None:
    w = Worker(routers=[router], messages_limit=1, handle_signals=[])
    await asyncio.wait_for(w.run(), timeout=RUN)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (Order(order_id=7, amount=9.5), {"order_id": 7, "amount": 9.5}),
        (Refund(order_id=8, reason="late"), {"order_id": 8, "reason": "late"}),
    ],
)
async def test_job_args_as_a_model_or_dataclass(q: Queue, args: Any, expected: Any) -> None:
    received: list[dict[str, Any]] = []
    r = Router()

    @r.actor(name="handle", queue=q.name)
    async def handle(order_id: int, **rest: Any) -> None:
        received.append({"order_id": order_id, **rest})

    await Job("handle", queue=q, args=args).enqueue()
    await _run_one(r)
    assert received == [expected]


async def test_model_args_are_validated_by_the_actor(q: Queue) -> None:
    received: list[Any] = []
    r = Router()

    @r.actor(name="charge", queue=q.name)
    async def charge(order_id: int, amount: float) -> None:
        received.append((order_id, amount))

    await Job("charge", queue=q, args=Order(order_id=1, amount=2)).enqueue()
    await _run_one(r)
    assert received == [(1, 2.0)]
    assert isinstance(received[0][1], float)


async def test_var_positional_actor_gets_the_values(q: Queue) -> None:
    received: list[tuple[Any, ...]] = []
    r = Router()

    @r.actor(name="collect", queue=q.name)
    async def collect(*args: Any) -> None:
        received.append(args)

    await Job("collect", queue=q, args={"a": 1, "b": 2}).enqueue()
    await _run_one(r)
    assert received == [(1, 2)]


async def test_failed_actor_result(q: Queue) -> None:
    r = Router()

    @r.actor(name="fails", queue=q.name)
    async def fails() -> None:
        raise ValueError("card declined")

    j = Job("fails", queue=q, store_result=True)
    await j.enqueue()
    await _run_one(r)
    result = await j.result
    assert result is not None
    assert result.success is False
    assert result.data == "card declined"
    assert result.exception == "ValueError"


async def test_wait_reads_a_failure_stored_as_16_did(q: Queue, conn: Connection) -> None:
    """The 1.6 layout the worker is to write: `Job.wait()` still raises the actor's error."""
    j = Job("fails", queue=q, store_result=True, result_id="r1")
    await j.enqueue()
    failure = ResultBucket(
        "card declined",
        False,
        1,
        2,
        exception="ValueError",
        exception_type="ValueError",
        traceback="Traceback (most recent call last):\nValueError: card declined\n",
    )
    await conn.results_bucket_broker.store_bucket("r1", failure)
    stored = await j.result
    assert stored is not None
    assert (stored.data, stored.exception, stored.traceback) == (
        "card declined",
        "ValueError",
        failure.traceback,
    )
    with pytest.raises(JobFailedError, match=r"^card declined$") as caught:
        await j.wait(timeout=5.0)
    assert caught.value.exception_type == "ValueError"
    assert caught.value.details == failure.traceback


async def test_cancelled_worker_logs_critical(q: Queue, caplog: pytest.LogCaptureFixture) -> None:
    r = Router()

    @r.actor(name="noop", queue=q.name)
    async def noop() -> None:
        return None

    w = Worker(routers=[r], handle_signals=[])
    with caplog.at_level(logging.CRITICAL, logger="repid"):
        task = asyncio.create_task(w.run())
        await asyncio.wait({task}, timeout=0.5)  # it runs (and would run forever)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert [rec.message for rec in caplog.records if rec.levelno == logging.CRITICAL] == [
        "Worker was cancelled."
    ]


class _SlowConnect(Connection):
    """A connection whose connect() takes a while, as a loaded server's does."""

    def __init__(self, inner: Connection, started: asyncio.Event) -> None:
        super().__init__(inner.raw_message_broker)
        self._inner = inner
        self._started = started

    async def connect(self) -> Connection:
        self._started.set()
        await asyncio.sleep(0.5)  # the delay itself is what this test is about
        return await self._inner.connect()


async def test_sigint_right_after_run_starts_stops_gracefully(conn: Connection) -> None:
    r = Router()

    @r.actor
    async def noop() -> None:
        return None

    connecting = asyncio.Event()
    slow = _SlowConnect(conn, connecting)
    w = Worker(routers=[r], graceful_shutdown_time=1.0)
    Repid.set_magic_connection(slow)
    interrupted: list[BaseException] = []
    previous = signal.getsignal(signal.SIGINT)

    def default_handler(signum: int, frame: object) -> None:
        interrupted.append(KeyboardInterrupt())

    signal.signal(signal.SIGINT, default_handler)
    try:
        task = asyncio.create_task(w.run())
        await asyncio.wait_for(connecting.wait(), timeout=5.0)
        os.kill(os.getpid(), signal.SIGINT)  # while run() is still connecting
        runner = await asyncio.wait_for(task, timeout=5.0)
    finally:
        signal.signal(signal.SIGINT, previous)
        Repid.set_magic_connection(None)
    assert interrupted == []  # the worker's handler got it, not the process's
    assert runner.processed == 0
