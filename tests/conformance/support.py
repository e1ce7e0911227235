"""Helpers of the conformance tests: running a worker, waiting with deadlines, browsing queues."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any

from repid import Connection, Job, Message, MessageCategory, Queue, Router, RouterDefaults, Worker

WAIT = 5.0
"""Seconds any single expected event may take before the test fails."""


async def wait(event: asyncio.Event, what: str, timeout: float = WAIT) -> None:
    """Wait for `event`, failing the test (not hanging it) after `timeout` seconds."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout}s waiting for: {what}") from None


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll a condition that has no event of its own (e.g. a broker-side state)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for: {what}")
        await asyncio.sleep(0.01)


def router_for(queue: Queue, **defaults: Any) -> Router:
    return Router(defaults=RouterDefaults(queue=queue.name, **defaults))


def make_worker(conn: Connection, *routers: Router, **options: Any) -> Worker:
    options.setdefault("handle_signals", [])
    options.setdefault("graceful_shutdown_time", 2.0)
    return Worker(list(routers), _connection=conn, **options)


def job(conn: Connection, name: str, queue: Queue, **options: Any) -> Job:
    return Job(name, queue=queue.name, _connection=conn, **options)


@contextlib.asynccontextmanager
async def running(worker: Worker, stop_timeout: float = 10.0) -> AsyncIterator[asyncio.Task[Any]]:
    """Run `worker` in a task for the block; stop it and re-raise its errors at the end."""
    task = asyncio.create_task(worker.run())
    try:
        yield task
    finally:
        # stop() is only honoured once run() has created its runner: repeat until it ends.
        deadline = time.monotonic() + stop_timeout
        while not task.done() and time.monotonic() < deadline:
            worker.stop()
            await asyncio.wait({task}, timeout=0.05)
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            raise AssertionError(f"worker did not stop within {stop_timeout}s")
    task.result()


async def run_to_limit(worker: Worker, timeout: float = WAIT) -> Any:
    """Run a worker that has a `messages_limit` until it returns."""
    try:
        return await asyncio.wait_for(worker.run(), timeout)
    except TimeoutError:
        raise AssertionError(
            f"worker with messages_limit={worker.messages_limit} did not finish in {timeout}s"
        ) from None


async def browse(queue: Queue, category: MessageCategory = MessageCategory.NORMAL) -> list[Message]:
    """The messages now in one part of `queue`. NORMAL ones are returned to the queue unsettled."""
    out: list[Message] = []
    async with contextlib.aclosing(
        queue.get_messages(category=category, stop_when_empty=True)
    ) as messages:
        async for message in messages:
            out.append(message)
    return out


async def assert_empty(
    queue: Queue, categories: Iterable[MessageCategory] = MessageCategory
) -> None:
    for category in categories:
        left = await browse(queue, category)
        assert left == [], f"{category.value} part of {queue.name} is not empty: {left}"


@contextlib.asynccontextmanager
async def consumed(queue: Queue, count: int = 1) -> AsyncIterator[list[Message]]:
    """Take exactly `count` ready messages to settle by hand; unsettled ones go back after."""
    messages = queue.get_messages(stop_when_empty=True)
    try:
        taken = [await anext(messages) for _ in range(count)]
        yield taken
    finally:
        await messages.aclose()
