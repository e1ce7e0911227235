"""A broker outage seen by a running worker, on every server broker (issue 26, defect 7): the
worker reaches the shared server through the chaos suite's TCP proxy, the proxy is cut, and
`/healthz` must answer 503 within seconds and for the whole cut, while the outage is logged once
per backoff step (the broker's `ping()` and one leading lane), not by each of the 1,000 lanes.

RabbitMQ, NATS and PostgreSQL clients reconnect inside their libraries, so a lane waiting for a
message sees no error: the worker's liveness watch (`SupportsLiveness.ping()`) is what notices.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from uuid import uuid4

import pytest

from repid import Connection, Job, Queue, Worker
from repid.brokers.base import MessageBrokerT
from repid.health_check_server import HealthCheckServerSettings
from tests.chaos._servers import Proxy, free_port, shared_port, via_proxy
from tests.unit._worker_helpers import http_get_status

CUT = 4.0
"""Seconds the proxy stays cut once the worker noticed the outage."""
NOTICE = 10.0
"""Seconds within which the worker must turn UNHEALTHY once the proxy is cut."""
MAX_OUTAGE_LINES = 12
"""Backoff steps of 0.5, 1, 2, 4, 5 s (liveness) and 0.1 ... 5 s (one lane) in the cut."""

BROKERS = ["redis", "rabbitmq", "kafka", "nats", "postgres"]


def _url(name: str) -> str:
    if name == "redis":
        from tests.conformance.specs.redis import DSN
    elif name == "rabbitmq":
        from tests.conformance.specs.rabbitmq import DSN
    elif name == "kafka":
        from tests.conformance.specs.kafka import BOOTSTRAP as DSN
    elif name == "nats":
        from tests.conformance.specs.nats import SERVERS as DSN
    else:
        from tests.conformance.specs.postgres import DSN
    return DSN


def _broker(name: str, url: str) -> MessageBrokerT:
    run = uuid4().hex[:8]
    if name == "redis":
        from repid.brokers.redis import RedisMessageBroker

        return RedisMessageBroker(url, prefix=f"repid-test:outage:{run}:")
    if name == "rabbitmq":
        from repid.brokers.rabbitmq import RabbitMessageBroker

        return RabbitMessageBroker(url, prefix=f"repid-test-outage-{run}-", timeout=5.0)
    if name == "kafka":
        from repid.brokers.kafka import KafkaMessageBroker

        return KafkaMessageBroker(url, topic_prefix=f"repid-outage-{run}-", commit_interval=0.05)
    if name == "nats":
        from repid.brokers.nats import NatsMessageBroker

        return NatsMessageBroker(url, prefix=f"repid-test-outage-{run}-", operation_timeout=5.0)
    from repid.brokers.postgres import PostgresMessageBroker
    from tests.conformance.specs.postgres import SCHEMA

    return PostgresMessageBroker(url, schema=SCHEMA, poll_interval=0.5)


@pytest.fixture(params=BROKERS)
def broker_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def proxy(broker_name: str) -> Iterator[Proxy]:
    instance = Proxy(shared_port(broker_name, _url(broker_name)), kafka=broker_name == "kafka")
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


def _outage_lines(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.name == "repid.worker"
        and ("consuming failed" in r.getMessage() or "broker unreachable" in r.getMessage())
    ]


async def test_health_is_unhealthy_for_the_whole_outage_and_it_is_logged_per_backoff_step(
    broker_name: str, proxy: Proxy, caplog: pytest.LogCaptureFixture
) -> None:
    url = (
        f"127.0.0.1:{proxy.port}"
        if broker_name == "kafka"
        else via_proxy(broker_name, _url(broker_name), proxy.port)
    )
    broker = _broker(broker_name, url)
    assert broker.capabilities.liveness
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
        deadline = loop.time() + 60.0
        while (runner := worker._runner) is None or not runner._lanes:  # consuming: no event
            assert not task.done(), "the worker ended early"
            assert loop.time() < deadline, "the worker did not start consuming"
            await asyncio.sleep(0.05)

        with caplog.at_level(logging.INFO):
            target = proxy.target
            proxy.target = ("127.0.0.1", free_port())  # new connections are refused
            proxy.drop()
            await _status_becomes(port, 503, "the outage to be noticed", timeout=NOTICE)
            cut_ends = loop.time() + CUT
            answers = []
            while loop.time() < cut_ends:  # sampling over the cut, not waiting for a state
                answers.append(await http_get_status(port))
                assert runner.healthy is False
                await asyncio.sleep(0.1)
            lines = _outage_lines(caplog.records)
            proxy.target = target
            await _status_becomes(port, 200, "the worker to recover after the outage", 60.0)
        assert set(answers) == {503}, answers
        assert 1 <= len(lines) <= MAX_OUTAGE_LINES, lines
        assert runner.healthy is True

        await Job("after_outage", queue=queue.name, _connection=conn).enqueue()
        await asyncio.wait_for(ran.wait(), 30.0)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 30.0)
        await broker.queue_delete(queue.name)
        await conn.disconnect()
