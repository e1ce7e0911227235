"""`JobLogMiddleware`: one structured record per lifecycle step, quiet unless configured."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest
from _obs_helpers import declare, in_memory_app, make_router, run_worker

from repid import Job
from repid.observability import JOB_FIELDS, JobLogMiddleware


def _records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "repid.jobs"]


def test_quiet_by_default() -> None:
    jobs_logger = logging.getLogger("repid.jobs")
    assert jobs_logger.handlers == []
    assert all(isinstance(h, logging.NullHandler) for h in logging.getLogger("repid").handlers)


async def test_success_logs_enqueue_start_and_outcome(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="repid.jobs")
    router = make_router()
    async with in_memory_app(JobLogMiddleware()):
        await declare(router)
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, 1)

    records = _records(caplog)
    assert [r.event for r in records] == ["enqueued", "started", "succeeded"]  # type: ignore[attr-defined]
    for record in records:
        for field in JOB_FIELDS:
            assert hasattr(record, field), field
        assert record.actor == "add"  # type: ignore[attr-defined]
        assert record.queue == "default"  # type: ignore[attr-defined]
        assert record.attempt == 1  # type: ignore[attr-defined]
    done = records[-1]
    assert done.levelno == logging.INFO
    assert done.outcome == "succeeded"  # type: ignore[attr-defined]
    assert isinstance(done.duration_ms, float)  # type: ignore[attr-defined]
    assert done.duration_ms >= 0  # type: ignore[attr-defined]
    assert records[0].job_id == done.job_id  # type: ignore[attr-defined]


async def test_failures_carry_the_error_and_attempt(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="repid.jobs")
    router = make_router()
    async with in_memory_app(JobLogMiddleware()):
        await declare(router)
        await Job("explode", retries=1).enqueue()
        await Job("add", args={"a": "not a number", "b": 2}).enqueue()
        await Job("stall", timeout=timedelta(seconds=1)).enqueue()
        await run_worker(router, 4)

    outcomes = {
        (r.actor, r.attempt, r.outcome): r  # type: ignore[attr-defined]
        for r in _records(caplog)
    }
    retried = outcomes["explode", 1, "retried"]
    assert retried.levelno == logging.WARNING
    assert retried.error_type == "ValueError"  # type: ignore[attr-defined]
    assert retried.error_message == "boom"  # type: ignore[attr-defined]
    dead = outcomes["explode", 2, "dead_lettered"]
    assert dead.levelno == logging.ERROR
    assert dead.error_type == "ValueError"  # type: ignore[attr-defined]
    invalid = outcomes["add", 1, "dead_lettered"]
    assert invalid.duration_ms is None  # type: ignore[attr-defined]  # never ran
    assert invalid.error_type is not None  # type: ignore[attr-defined]
    timed_out = outcomes["stall", 1, "dead_lettered"]
    assert timed_out.error_type == "TimeoutError"  # type: ignore[attr-defined]
    assert timed_out.duration_ms >= 1000  # type: ignore[attr-defined]


async def test_custom_logger_and_level_filtering(caplog: pytest.LogCaptureFixture) -> None:
    mine = logging.getLogger("myapp.jobs")
    caplog.set_level(logging.INFO, logger="myapp.jobs")
    router = make_router()
    async with in_memory_app(JobLogMiddleware(mine)):
        await declare(router)
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, 1)
    events = [r.event for r in caplog.records if r.name == "myapp.jobs"]  # type: ignore[attr-defined]
    assert events == ["succeeded"]  # DEBUG records filtered out
