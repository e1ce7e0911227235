"""Listing pages read at most one page of messages from the broker (a count, not a timing)."""

from __future__ import annotations

import contextlib

from repid import Connection, InMemoryMessageBroker, Queue
from repid.dashboard.data import message_page
from repid.job import Job


async def test_first_page_fetches_at_most_one_page_plus_one() -> None:
    conn = Connection(InMemoryMessageBroker())
    async with conn:
        queue = Queue("paging", _connection=conn)
        await queue.declare()
        for n in range(120):
            await Job("a", queue="paging", args={"n": n}, _connection=conn).enqueue()
        async with contextlib.aclosing(queue.get_messages(stop_when_empty=True)) as messages:
            async for message in messages:
                await message.nack()
        first = await message_page(conn, "paging", "dead", limit=25)
        assert len(first.rows) == 25
        assert first.has_more
        assert first.fetched <= 26
        third = await message_page(conn, "paging", "dead", offset=50, limit=25)
        assert third.fetched <= 76
        assert {r.id_ for r in third.rows}.isdisjoint({r.id_ for r in first.rows})
        last = await message_page(conn, "paging", "dead", offset=100, limit=25)
        assert len(last.rows) == 20
        assert not last.has_more
