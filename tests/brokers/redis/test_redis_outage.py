"""A Redis outage seen by a running worker (issue 26, defect 7): the worker reaches the shared
Redis through the chaos suite's TCP proxy, the proxy is cut for a few seconds, and `/healthz`
must answer 503 for the whole cut while the outage is logged once per backoff step by one lane,
not by each of the 1,000 default lanes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from uuid import uuid4

import pytest

from repid import Connection, Job, Queue, RedisMessageBroker, Worker
from repid.health_check_server import HealthCheckServerSettings
from tests.chaos._servers import Proxy, free_port, shared_port, via_proxy
from tests.conformance.specs.redis import DSN
from tests.unit._worker_helpers import http_get_status

CUT = 4.0
"""Seconds the proxy stays cut once the worker noticed the outage."""
MAX_OUTAGE_LINES = 12
"""Backoff steps of 0.1, 0.2, 0.4, ... 5 s fit a handful of lines into the cut (and detection)."""


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    instance = Proxy(shared_port("redis", DSN))
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


async def _status_becomes(port: int, status: int, what: str, timeout: float = 30.0) -> None:
    """Poll the health endpoint (it has no event to wait on) until it answers `status`."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while await http_get_status(port) != status:
        assert loop.time() < deadline, f"timed out after {timeout}s waiting for {what}"
        await asyncio.sleep(0.05)


async def test_health_is_unhealthy_for_the_whole_outage_and_one_lane_logs_it(
    proxy: Proxy, prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisMessageBroker(via_proxy("redis", DSN, proxy.port), prefix=prefix)
    conn = Connection(broker)
    await conn.connect()
    queue = Queue(f"q_{uuid4().hex[:10]}", _connection=conn)
    await queue.declare()
    worker = Worker(
        handle_signals=[],
        graceful_shutdown_time=2.0,
        run_health_check_server=True,
        health_check_server_settings=HealthCheckServerSettings(address="127.0.0.1", port=0),
        _connection=conn,
    )  # the default 1,000 lanes
    ran = asyncio.Event()

    @worker.actor(queue=queue.name)
    async def after_outage() -> None:
        ran.set()

    task = asyncio.create_task(worker.run())
    try:
        loop = asyncio.get_running_loop()
        while worker.health_check_port is None:  # no event for "the server is bound"
            assert not task.done(), "the worker ended early"
            await asyncio.sleep(0.01)
        port = worker.health_check_port
        await _status_becomes(port, 200, "the worker to be healthy")
        runner = worker._runner
        assert runner is not None
        while not await conn.live_workers():  # started up to its first heartbeat (no event)
            assert not task.done(), "the worker ended early"
            await asyncio.sleep(0.05)

        with caplog.at_level(logging.INFO):
            target = proxy.target
            proxy.target = ("127.0.0.1", free_port())  # new connections are refused
            proxy.drop()
            await _status_becomes(port, 503, "the outage to be noticed", timeout=20.0)
            cut_ends = loop.time() + CUT
            answers = []

            def outage_lines() -> list[logging.LogRecord]:
                return [
                    r
                    for r in caplog.records
                    if r.name == "repid.worker" and "consuming failed" in r.getMessage()
                ]

            # Sampling over the cut, and on until the consuming side reported the outage too:
            # a lane inside a Redis call sees the failure only when the link's own retry window
            # (10 s) ends, which on a loaded machine can come after the health check's.
            reported_by = loop.time() + 30.0
            while loop.time() < cut_ends or not outage_lines():
                assert loop.time() < reported_by, "no lane logged the outage in 30 s"
                answers.append(await http_get_status(port))
                assert runner.healthy is False
                await asyncio.sleep(0.1)
            lines = outage_lines()
            proxy.target = target
            await _status_becomes(port, 200, "the worker to recover after the outage")
        assert set(answers) == {503}, answers
        assert 1 <= len(lines) <= MAX_OUTAGE_LINES, [r.getMessage() for r in lines]
        assert runner.healthy is True

        await Job("after_outage", queue=queue.name, _connection=conn).enqueue()
        await asyncio.wait_for(ran.wait(), 20.0)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30.0)
        await broker.queue_delete(queue.name)
        await conn.disconnect()
