"""Helpers shared by the unit tests: an in-memory app, a worker running in the background, and
ways to look at what ended in a queue, all synchronised by polling with a deadline (no sleeps).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

from repid import (
    Connection,
    InMemoryMessageBroker,
    Message,
    MessageCategory,
    Parameters,
    Queue,
    Repid,
    RoutingKey,
    Runner,
    Worker,
)
from repid.ids import new_id

TIMEOUT = 5.0
"""Upper bound on any single wait in these tests; a healthy run needs a small fraction of it."""


async def wait_until(
    predicate: Callable[[], bool] | Callable[[], Awaitable[bool]],
    timeout: float = TIMEOUT,
    what: str = "condition",
) -> None:
    """Poll `predicate` (sync or async) until it holds; fail after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def magic_app(
    broker: Any | None = None, **connection_kwargs: Any
) -> AsyncIterator[Connection]:
    """Connect an in-memory app and make it the default connection inside the block."""
    connection = Connection(broker or InMemoryMessageBroker(), **connection_kwargs)
    async with Repid(connection).magic(auto_disconnect=True) as conn:
        yield conn


@contextlib.asynccontextmanager
async def running(worker: Worker, timeout: float = TIMEOUT) -> AsyncIterator[asyncio.Task[Runner]]:
    """Run `worker` in a task for the block, then stop it gracefully and wait for it.

    Yields only once the worker's runner exists, so that `worker.stop()` cannot be lost, and
    its health check server (if it runs one) listens.
    """
    task = asyncio.create_task(worker.run())

    def started() -> bool:
        if worker._runner is None:
            return False
        return not worker.run_health_check_server or worker.health_check_port is not None

    try:
        await wait_until(lambda: started() or task.done(), timeout, "the worker to start")
        if task.done():
            task.result()  # raise what made it fail
        yield task
    finally:
        worker.stop()
        if not task.done():
            await asyncio.wait_for(asyncio.shield(task), timeout)


async def messages(conn: Connection, queue: str, category: MessageCategory) -> list[Message]:
    """Browse the messages of one part of a queue (NORMAL ones are returned on exit)."""
    return [
        m
        async for m in Queue(queue, _connection=conn).get_messages(
            category=category, stop_when_empty=True
        )
    ]


async def dead_letters(conn: Connection, queue: str = "default") -> list[Message]:
    return await messages(conn, queue, MessageCategory.DEAD)


async def enqueue_raw(
    broker: InMemoryMessageBroker,
    topic: str,
    payload: str = "",
    *,
    queue: str = "default",
    timeout: float = 600.0,
    **parameters: Any,
) -> str:
    """Publish straight through the broker, e.g. with a sub-second timeout `Job` would refuse."""
    id_ = new_id()
    await broker.enqueue(
        RoutingKey(id_, topic, queue),
        payload,
        Parameters(execution_timeout=timedelta(seconds=timeout), **parameters),
    )
    return id_


class FlakyConsumer:
    """Wraps a consumer; `consume()` and `fetch()` (the worker's outage probe) raise
    ConnectionError while its broker says it is down, like a dropped connection."""

    def __init__(self, inner: Any, broker: FlakyBroker) -> None:
        self._inner = inner
        self._broker = broker

    def _reach(self) -> None:
        broker = self._broker
        broker.consume_calls += 1
        if broker.down or broker.consume_failures > 0:
            broker.consume_failures = max(0, broker.consume_failures - 1)
            broker.failed_consumes += 1
            raise ConnectionError("connection to the broker was dropped")

    async def consume(self) -> Any:
        self._reach()
        return await self._inner.consume()

    async def fetch(self, max_count: int, timeout: float = 0.0) -> Any:
        self._reach()
        return await self._inner.fetch(max_count, timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class FlakyBroker(InMemoryMessageBroker):
    """An in-memory broker whose consumers fail like a dropped connection, and whose `ack` can
    fail a given number of times."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.down = False
        self.consume_failures = 0
        self.failed_consumes = 0
        self.consume_calls = 0
        self.ack_failures = 0
        self.failed_acks = 0

    def get_consumer(self, *args: Any, **kwargs: Any) -> Any:
        return FlakyConsumer(super().get_consumer(*args, **kwargs), self)

    async def ack(self, key: Any) -> bool:
        if self.ack_failures > 0:
            self.ack_failures -= 1
            self.failed_acks += 1
            raise ConnectionError("ack lost: the channel closed")
        return await super().ack(key)


async def http_get_status(port: int, path: str = "/healthz", host: str = "127.0.0.1") -> int:
    """Send one HTTP GET and return the status code of the answer."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), TIMEOUT)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), TIMEOUT)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return int(answer.split(b" ", 2)[1])
