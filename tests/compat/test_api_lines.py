"""API-1.6.md statements that had no test of their own (found going through it line by line):
`retries >= 0`, `is_unique` and unique jobs, `include_router` overriding, middleware errors,
the default connection across tasks and `Connection.is_open`."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from repid import Connection, InMemoryMessageBroker, Job, Queue, Repid, Router


def test_negative_retries_are_refused() -> None:
    with pytest.raises(ValueError):
        Job("a", retries=-1, _connection=Connection(InMemoryMessageBroker()))


def test_include_router_later_names_override() -> None:
    first, second, merged = Router(), Router(), Router()

    @first.actor(name="job")
    def one() -> int:
        return 1

    @second.actor(name="job")
    def two() -> int:
        return 2

    merged.include_router(first)
    merged.include_router(second)
    assert merged.actors["job"].fn is two


async def test_connection_is_open() -> None:
    conn = Connection(InMemoryMessageBroker())
    assert not conn.is_open
    await conn.connect()
    assert conn.is_open
    await conn.disconnect()
    assert not conn.is_open


async def test_unique_job_is_not_duplicated_while_pending() -> None:
    app = Repid(Connection(InMemoryMessageBroker()))
    async with app.magic(auto_disconnect=True):
        queue = Queue()
        await queue.declare()
        unique = Job("a", id_="only-once")
        assert unique.is_unique
        assert not Job("a").is_unique
        await unique.enqueue()
        await Job("a", id_="only-once").enqueue()
        ids = [m.key.id_ async for m in queue.get_messages(stop_when_empty=True)]
        assert ids == ["only-once"]


async def test_default_connection_is_visible_across_tasks() -> None:
    conn = Connection(InMemoryMessageBroker())
    app = Repid(conn)
    async with app.magic(auto_disconnect=True):

        async def elsewhere() -> Connection:
            return Repid.get_magic_connection()

        assert await asyncio.create_task(elsewhere()) is conn


class _Broken:
    def before_enqueue(self, **_: Any) -> None:
        raise RuntimeError("middleware bug")


async def test_a_middleware_exception_is_logged_and_swallowed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Repid(Connection(InMemoryMessageBroker()), middlewares=[_Broken()])
    async with app.magic(auto_disconnect=True):
        queue = Queue()
        await queue.declare()
        with caplog.at_level(logging.ERROR):
            await Job("a").enqueue()
        assert [m async for m in queue.get_messages(stop_when_empty=True)] != []
    assert any("middleware bug" in (r.exc_text or "") + r.getMessage() for r in caplog.records)
