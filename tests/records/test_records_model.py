"""Job records without a broker in the way: the event-to-record function, the error cap, the
retention on the in-memory bucket, the configuration errors and removing event handlers."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from repid import Connection, InMemoryBucketBroker, InMemoryMessageBroker
from repid.errors import ConfigurationError
from repid.lifecycle import EventKind, JobEvent
from repid.records import BucketRecordStore, JobRecord, JobStatus, apply_event


def event(kind: EventKind, attempt: int = 1, **fields: object) -> JobEvent:
    return JobEvent(kind, "job-1", "actor", "queue", attempt, time.time(), **fields)  # type: ignore[arg-type]


def test_a_retried_job_goes_through_every_status() -> None:
    record = apply_event(None, event(EventKind.ENQUEUED, due=time.time() + 60))
    assert record.status is JobStatus.DELAYED
    record = apply_event(record, event(EventKind.STARTED, worker="w:1:a"))
    assert (record.status, record.attempts, record.worker) == (JobStatus.RUNNING, 1, "w:1:a")
    failed = event(EventKind.FAILED, error_type="KeyError", error="'x'", traceback="tb", worker="w")
    record = apply_event(record, failed)
    assert record.status is JobStatus.FAILED
    record = apply_event(record, event(EventKind.RETRIED))
    assert (record.status, record.attempt) == (JobStatus.QUEUED, 2)
    record = apply_event(record, event(EventKind.STARTED, 2))
    record = apply_event(record, event(EventKind.SUCCEEDED, 2))
    assert (record.status, record.attempts, len(record.errors)) == (JobStatus.SUCCEEDED, 2, 1)
    assert record.finished
    assert JobRecord.from_json(record.to_json()) == record


def test_the_error_history_keeps_the_last_n_within_the_byte_bound() -> None:
    record = None
    for attempt in range(1, 8):
        record = apply_event(
            record,
            event(
                EventKind.FAILED,
                attempt,
                error_type="E",
                error="m" * 10_000,
                traceback="t" * 10_000,
            ),
            error_history=3,
            error_bytes=4_096,
        )
    assert record is not None
    assert [e.attempt for e in record.errors] == [5, 6, 7]
    assert sum(len((e.message or "") + (e.traceback or "")) for e in record.errors) <= 4_096
    none_kept = apply_event(None, event(EventKind.FAILED, error_type="E"), error_history=0)
    assert none_kept.errors == ()


def test_a_dead_letter_after_a_failure_does_not_repeat_the_error() -> None:
    failed = apply_event(None, event(EventKind.FAILED, error_type="E", error="boom"))
    dead = apply_event(failed, event(EventKind.DEAD_LETTERED, error_type="E", error="boom"))
    assert (dead.status, len(dead.errors)) == (JobStatus.DEAD, 1)


async def test_records_expire_after_their_retention() -> None:
    store = BucketRecordStore(InMemoryBucketBroker(use_result_bucket=True))
    await store.put(apply_event(None, event(EventKind.ENQUEUED)), timedelta(seconds=0.05))
    assert await store.get("job-1") is not None
    deadline = time.monotonic() + 5
    while await store.get("job-1") is not None:
        assert time.monotonic() < deadline, "the record outlived its retention"
        await asyncio.sleep(0.02)


async def test_records_need_a_store_and_job_state_needs_records() -> None:
    with pytest.raises(ConfigurationError, match="records=True"):
        Connection(InMemoryMessageBroker(), records=True)
    with pytest.raises(ConfigurationError, match="needs job records"):
        await Connection(InMemoryMessageBroker()).job_state("x")


async def test_an_event_handler_can_be_removed() -> None:
    conn = Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
        records=True,
    )
    seen: list[EventKind] = []

    class Handler:
        def on(self, e: JobEvent) -> None:
            seen.append(e.kind)

    handler = Handler()
    conn.on_event(handler.on)
    await conn.events.emit(event(EventKind.ENQUEUED))
    assert conn.remove_event_handler(handler.on) is True  # a bound method, compared by equality
    assert conn.remove_event_handler(handler.on) is False
    await conn.events.emit(event(EventKind.STARTED))
    assert seen == [EventKind.ENQUEUED]
    assert conn.events.active, "the records writer is still registered"
    assert conn.records is not None
    with pytest.raises(ConfigurationError):
        conn.remove_event_handler(conn.records)
    record = await conn.job_state("job-1")
    assert record is not None
    assert record.status is JobStatus.RUNNING
