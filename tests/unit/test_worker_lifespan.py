"""`Worker(lifespan=...)`: resources that live as long as the worker, reachable from `Depends`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import pytest

from repid import (
    Connection,
    Depends,
    InMemoryMessageBroker,
    Job,
    MessageDependency,
    Queue,
    Repid,
    Router,
    Worker,
)
from repid.errors import ConfigurationError


async def db(message: MessageDependency) -> str:
    """A dependency reading the worker's lifespan state (module level: the actors' string
    annotations are resolved in the module's namespace)."""
    value: str = message.worker_state["db"]
    return value


async def test_lifespan_wraps_every_actor_and_feeds_depends() -> None:
    events: list[str] = []
    router = Router()
    release = asyncio.Event()
    started = asyncio.Event()

    @asynccontextmanager
    async def lifespan(worker: Worker) -> AsyncIterator[dict[str, Any]]:
        events.append("enter")
        assert worker.state is None
        yield {"db": "the-pool"}
        events.append("exit")

    @router.actor
    async def slow(pool: Annotated[str, Depends(db)]) -> None:
        events.append(f"slow started with {pool}")
        started.set()
        await release.wait()
        events.append("slow finished")

    app = Repid(Connection(InMemoryMessageBroker()))
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        await Job("slow").enqueue()
        worker = Worker(
            routers=[router], lifespan=lifespan, handle_signals=[], graceful_shutdown_time=30
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        assert worker.state == {"db": "the-pool"}
        worker.stop()  # the running actor is let finish before the lifespan ends
        await asyncio.sleep(0)
        assert events == ["enter", "slow started with the-pool"]
        release.set()
        runner = await asyncio.wait_for(task, 10)
    assert events == ["enter", "slow started with the-pool", "slow finished", "exit"]
    assert runner.succeeded == 1
    assert worker.state is None


async def test_a_lifespan_that_fails_to_enter_fails_run_before_any_message() -> None:
    ran: list[int] = []
    router = Router()

    @router.actor
    async def job() -> None:
        ran.append(1)

    @asynccontextmanager
    async def lifespan(worker: Worker) -> AsyncIterator[None]:
        raise RuntimeError("database is down")
        yield  # pragma: no cover

    app = Repid(Connection(InMemoryMessageBroker()))
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        await Job("job").enqueue()
        worker = Worker(routers=[router], lifespan=lifespan, handle_signals=[])
        with pytest.raises(RuntimeError, match="database is down"):
            await asyncio.wait_for(worker.run(), 10)
        assert ran == []
        assert not worker.is_running
        # the worker can run again once the lifespan works
        worker.lifespan = None
        worker.messages_limit = 1
        await asyncio.wait_for(worker.run(), 10)
    assert ran == [1]


def test_lifespan_must_make_an_async_context_manager() -> None:
    with pytest.raises(ConfigurationError, match="lifespan must be a function"):
        Worker(lifespan=object())  # type: ignore[arg-type]


async def test_a_lifespan_returning_something_else_is_a_clear_error() -> None:
    app = Repid(Connection(InMemoryMessageBroker()))
    router = Router()
    router.actor(name="x")(lambda: None)
    async with app.magic(auto_disconnect=True):
        worker = Worker(
            routers=[router],
            lifespan=lambda worker: None,  # type: ignore[arg-type,return-value]
            handle_signals=[],
        )
        with pytest.raises(ConfigurationError, match="lifespan returned NoneType"):
            await asyncio.wait_for(worker.run(), 10)
