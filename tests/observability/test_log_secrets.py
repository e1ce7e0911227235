"""A failing actor whose error names a URL with a password: the worker's log lines (retried,
dead-lettered, `log_jobs`) mask the password."""

from __future__ import annotations

import logging
from datetime import timedelta

import pytest

from repid import Job, Router
from tests.observability._obs_helpers import declare, in_memory_app, run_worker

SECRET = "hunter2secret"


async def test_failure_log_lines_mask_passwords(caplog: pytest.LogCaptureFixture) -> None:
    router = Router()

    @router.actor(retry_policy=lambda _retry: timedelta(0))
    async def connect_db() -> None:
        raise ConnectionError(f"cannot reach postgresql://app:{SECRET}@db.internal:5432/app")

    caplog.set_level(logging.DEBUG, logger="repid")
    async with in_memory_app():
        await declare(router)
        await Job("connect_db", retries=1).enqueue()
        runner = await run_worker(router, 2, log_jobs=True)
    assert runner.processed == 2
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("repid")]
    assert any("retrying" in line for line in lines), lines
    assert any("dead-lettered" in line for line in lines), lines
    assert any("failed in" in line for line in lines), lines
    assert all(SECRET not in line for line in lines), [line for line in lines if SECRET in line]
    assert any("app:***@db.internal" in line for line in lines), lines
