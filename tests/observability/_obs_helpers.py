"""Shared pieces of the observability tests: an in-memory app with given middlewares and a
router whose actors succeed, fail, time out or refuse their input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

from repid import Connection, InMemoryMessageBroker, Repid, Router, Runner, Worker


def no_backoff(_retry: int) -> timedelta:
    return timedelta(0)


def make_router(on_run: Callable[[], Any] | None = None) -> Router:
    router = Router()

    @router.actor
    async def add(a: int, b: int) -> int:
        if on_run is not None:
            on_run()
        return a + b

    @router.actor(retry_policy=no_backoff)
    async def explode() -> None:
        raise ValueError("boom")

    @router.actor
    async def stall() -> None:
        await asyncio.Event().wait()

    return router


@asynccontextmanager
async def in_memory_app(*middlewares: Any) -> AsyncIterator[Repid]:
    app = Repid(Connection(InMemoryMessageBroker()), middlewares=list(middlewares))
    async with app.magic(auto_disconnect=True):
        yield app


async def run_worker(router: Router, messages: int, **options: Any) -> Runner:
    worker = Worker(routers=[router], messages_limit=messages, handle_signals=[], **options)
    return await asyncio.wait_for(worker.run(), timeout=10)


async def declare(router: Router) -> None:
    await Worker(routers=[router], handle_signals=[]).declare_all_queues()
