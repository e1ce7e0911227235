"""The broker table and the fixtures every conformance test uses.

Adding a broker to the suite is one module in `tests/conformance/specs/` (see its docstring): a
factory building an unconnected `Connection` and the capabilities the broker must declare.
Tests that need a capability call `require(conn, ...)`, which reads `broker.capabilities` and
skips with the declared reason.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import fields
from typing import Any
from uuid import uuid4

import pytest

from repid import BrokerCapabilities, Connection, Queue, Repid
from tests.conformance.specs import BrokerSpec, load_specs

BROKERS: dict[str, BrokerSpec] = load_specs()

BOOLEAN_CAPABILITIES = frozenset(
    f.name
    for f in fields(BrokerCapabilities)
    if isinstance(getattr(BrokerCapabilities(), f.name), bool)
)


def declared_capabilities(conn: Connection) -> BrokerCapabilities:
    caps: BrokerCapabilities = conn.message_broker.capabilities
    return caps


def require(conn: Connection, **wanted: bool) -> None:
    """Skip, naming the declaration, unless the broker declares each capability as wanted."""
    caps = declared_capabilities(conn)
    missing = {name: value for name, value in wanted.items() if getattr(caps, name) is not value}
    if missing:
        declared = ", ".join(f"{name}={not value}" for name, value in missing.items())
        pytest.skip(f"broker declares {declared}")


@pytest.fixture(params=sorted(BROKERS))
def broker_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def broker_spec(broker_name: str) -> BrokerSpec:
    return BROKERS[broker_name]


@pytest.fixture(autouse=True)
def _no_default_connection() -> Iterator[None]:
    """Tests pass connections explicitly; none leaks a `Repid.magic()` default to the next."""
    Repid.set_magic_connection(None)
    yield
    Repid.set_magic_connection(None)


class Cleanup:
    """Queues declared by a test, deleted (with their messages) when it ends."""

    def __init__(self) -> None:
        self.queues: list[tuple[Connection, str]] = []
        self.connections: list[Connection] = []

    async def run(self) -> None:
        for conn, name in reversed(self.queues):
            await conn.raw_message_broker.queue_delete(name)
        for conn in reversed(self.connections):
            await conn.disconnect()


@pytest.fixture
async def _cleanup() -> AsyncIterator[Cleanup]:
    cleanup = Cleanup()
    yield cleanup
    await cleanup.run()


MakeConn = Callable[..., Awaitable[Connection]]


@pytest.fixture
def make_conn(broker_spec: BrokerSpec, _cleanup: Cleanup) -> MakeConn:
    """Build and connect another connection to the broker under test (e.g. with a short lease)."""

    async def make(**options: Any) -> Connection:
        conn = broker_spec.make(**options)
        await conn.connect()
        _cleanup.connections.append(conn)
        return conn

    return make


@pytest.fixture
async def conn(make_conn: MakeConn) -> Connection:
    """A connected `Connection` to the broker under test, with a results bucket.

    It is disconnected, and the queues declared through `new_queue` deleted, after the test.
    """
    return await make_conn()


NewQueue = Callable[..., Awaitable[Queue]]


@pytest.fixture
def new_queue(conn: Connection, _cleanup: Cleanup) -> NewQueue:
    """`await new_queue()` declares a queue with a unique name (on `conn` unless given another)."""

    async def make(on: Connection | None = None) -> Queue:
        target = on or conn
        queue = Queue(f"q_{uuid4().hex[:10]}", _connection=target)
        _cleanup.queues.append((target, queue.name))
        await queue.declare()
        return queue

    return make
