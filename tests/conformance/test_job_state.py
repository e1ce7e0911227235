"""Job records (issue 17): `connection.job_state(id)` on every broker — queued, delayed,
running (worker, attempt), succeeded, failed, dead, cancelled — with attempts, timings and the
capped error history, written by the producer and at the worker's settlement points."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from repid import Connection
from repid.records import JobStatus
from tests.conformance.conftest import Cleanup, require
from tests.conformance.specs import BrokerSpec

from .support import job, make_worker, router_for, run_to_limit, running, wait


def no_backoff(retry_number: int = 1) -> int:
    return 0


@pytest.fixture
async def rconn(broker_spec: BrokerSpec, _cleanup: Cleanup) -> Connection:
    """The broker under test with job records on (kept in its results bucket broker)."""
    base = broker_spec.make()
    conn = Connection(
        base.raw_message_broker,
        base.raw_args_bucket_broker,
        base.raw_results_bucket_broker,
        records=True,
        error_history=2,
    )
    await conn.connect()
    _cleanup.connections.append(conn)
    return conn


async def state_becomes(conn: Connection, job_id: str, status: JobStatus) -> object:
    deadline = time.monotonic() + 5.0
    while True:
        record = await conn.job_state(job_id)
        if record is not None and record.status is status:
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never became {status}; last: {record}")
        await asyncio.sleep(0.02)


async def test_queued_then_succeeded_with_attempts_and_timings(rconn, new_queue):
    queue = await new_queue(rconn)
    router = router_for(queue)

    @router.actor
    async def add(a: int, b: int) -> int:
        return a + b

    sent = await job(rconn, "add", queue, args={"a": 1, "b": 2}).enqueue()
    job_id = sent.last_id
    assert job_id is not None
    queued = await rconn.job_state(job_id)
    assert queued is not None
    assert (queued.status, queued.actor, queued.queue, queued.attempts) == (
        JobStatus.QUEUED,
        "add",
        queue.name,
        0,
    )
    assert queued.enqueued_at is not None
    assert queued.started_at is None

    runner = await run_to_limit(make_worker(rconn, router, messages_limit=1))

    done = await rconn.job_state(job_id)
    assert done is not None
    assert done.status is JobStatus.SUCCEEDED
    assert done.finished
    assert (done.attempt, done.attempts, done.errors) == (1, 1, ())
    assert done.worker == runner.worker_id
    assert done.enqueued_at <= done.started_at <= done.finished_at  # type: ignore[operator]


async def test_an_unknown_id_has_no_record(rconn):
    assert await rconn.job_state("never-enqueued-id") is None


async def test_a_deferred_job_is_delayed_until_its_due_time(rconn, new_queue):
    queue = await new_queue(rconn)
    sent = await job(rconn, "later", queue, deferred_by=timedelta(hours=1)).enqueue()
    assert sent.last_id is not None
    record = await rconn.job_state(sent.last_id)
    assert record is not None
    assert record.status is JobStatus.DELAYED
    assert record.due is not None
    assert record.due > time.time() + 3000


async def test_a_running_job_names_its_worker_and_attempt(rconn, new_queue):
    queue = await new_queue(rconn)
    router = router_for(queue, retry_policy=no_backoff)
    started = asyncio.Event()
    release = asyncio.Event()
    runs: list[int] = []

    @router.actor
    async def slow() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise ValueError("first attempt fails")
        started.set()
        await release.wait()

    sent = await job(rconn, "slow", queue, retries=1).enqueue()
    job_id = sent.last_id
    assert job_id is not None
    worker = make_worker(rconn, router)
    async with running(worker):
        await wait(started, "the second attempt starts")
        record = await state_becomes(rconn, job_id, JobStatus.RUNNING)
        assert record.attempt == 2
        assert record.attempts == 2
        assert record.worker
        assert record.worker.count(":") >= 2
        assert [e.message for e in record.errors] == ["first attempt fails"]  # type: ignore[attr-defined]
        release.set()
        await state_becomes(rconn, job_id, JobStatus.SUCCEEDED)


async def test_retries_end_dead_with_a_capped_error_history(rconn, new_queue):
    queue = await new_queue(rconn)
    router = router_for(queue, retry_policy=no_backoff)

    @router.actor
    async def broken() -> None:
        raise RuntimeError("boom " + "x" * 50_000)

    sent = await job(rconn, "broken", queue, retries=3).enqueue()
    job_id = sent.last_id
    assert job_id is not None
    runner = await run_to_limit(make_worker(rconn, router, messages_limit=4))

    record = await rconn.job_state(job_id)
    assert record is not None
    assert record.status is JobStatus.DEAD
    assert (record.attempt, record.attempts) == (4, 4)
    assert [e.attempt for e in record.errors] == [3, 4], "error_history=2 keeps the last two"
    for entry in record.errors:
        assert entry.type == "RuntimeError"
        assert entry.message is not None
        assert entry.message.startswith("boom x")
        assert "…" in entry.message
        assert len(entry.message) < 5_000
        assert entry.traceback is not None
        assert "RuntimeError" in entry.traceback
        assert entry.worker == runner.worker_id
    assert len(record.to_json().encode()) < 16_384 + 4_096, "bounded in bytes"


async def test_a_failure_without_retries_is_dead_and_refused_input_too(rconn, new_queue):
    queue = await new_queue(rconn)
    router = router_for(queue)

    @router.actor
    async def takes_int(n: int) -> None:
        return None

    sent = await job(rconn, "takes_int", queue, args={"n": "not a number"}).enqueue()
    assert sent.last_id is not None
    await run_to_limit(make_worker(rconn, router, messages_limit=1))
    record = await rconn.job_state(sent.last_id)
    assert record is not None
    assert record.status is JobStatus.DEAD
    assert len(record.errors) == 1
    assert record.errors[0].type is not None


async def test_a_cancelled_job_is_recorded_cancelled(rconn, new_queue):
    require(rconn, cancellation=True)
    queue = await new_queue(rconn)
    waiting = await job(rconn, "never_runs", queue).enqueue()
    assert waiting.last_id is not None
    await waiting.cancel()
    record = await rconn.job_state(waiting.last_id)
    assert record is not None
    assert record.status is JobStatus.CANCELLED

    router = router_for(queue)
    started = asyncio.Event()

    @router.actor
    async def long() -> None:
        started.set()
        await asyncio.sleep(60)

    runs = await job(rconn, "long", queue).enqueue()
    assert runs.last_id is not None
    async with running(make_worker(rconn, router)):
        await wait(started, "the long job starts")
        await runs.cancel()
        await state_becomes(rconn, runs.last_id, JobStatus.CANCELLED)
