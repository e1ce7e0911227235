"""Fixtures of the dashboard tests: a connected broker (in-memory, Redis, RabbitMQ) with a queue
holding dead letters and a delayed message, and an httpx client on the dashboard app."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import uuid4

import httpx
import pytest

from repid import Connection, Job, Queue
from repid.dashboard import create_app
from tests.conformance.specs import load_specs
from tests.conformance.support import make_worker, router_for, run_to_limit

SPECS = load_specs()
BROKERS = ("memory", "redis", "rabbitmq")
SECRET = "hunter2secret"
"""A password inside an error message of a dead letter: it must never reach a page."""


@dataclass
class Setup:
    conn: Connection
    queue: str
    dead_ids: list[str]
    delayed_id: str


async def fill(conn: Connection, name: str, dead: int = 2, *, delayed: bool = True) -> Setup:
    """Declare `name`, make `dead` dead letters (an actor that raises) and one delayed job."""
    queue = Queue(name, _connection=conn)
    await queue.declare()
    router = router_for(queue, retries=0)

    @router.actor(name="fails")
    async def fails(n: int) -> None:
        raise ValueError(f"cannot reach postgresql://app:{SECRET}@db.example/prod (job {n})")

    del fails
    ids = []
    for n in range(dead):
        job = Job("fails", queue=name, args={"n": n}, retries=0, _connection=conn)
        await job.enqueue()
        assert job.last_id is not None
        ids.append(job.last_id)
    await run_to_limit(make_worker(conn, router, messages_limit=dead), timeout=20)
    if not delayed:
        return Setup(conn, name, ids, "")
    later = Job(
        "fails", queue=name, args={"n": 99}, deferred_by=timedelta(hours=1), _connection=conn
    )
    await later.enqueue()
    assert later.last_id is not None
    return Setup(conn, name, ids, later.last_id)


@pytest.fixture(params=BROKERS)
async def setup(request: pytest.FixtureRequest) -> AsyncIterator[Setup]:
    conn = SPECS[request.param].make()
    await conn.connect()
    name = f"dash_{uuid4().hex[:10]}"
    try:
        yield await fill(conn, name)
    finally:
        try:
            await conn.raw_message_broker.queue_delete(name)
        finally:
            await conn.disconnect()


ClientFactory = Callable[..., httpx.AsyncClient]


@pytest.fixture
def client_for(setup: Setup) -> ClientFactory:
    def make(**options: Any) -> httpx.AsyncClient:
        options.setdefault("queues", [setup.queue])
        app = create_app(setup.conn, **options)
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1"
        )

    return make
