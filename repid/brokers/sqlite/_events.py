"""The SQLite broker's event bus. SQLite has no pub/sub: events are rows of `repid_events`
that each subscriber polls by increasing `seq` (from the last row when it subscribed); rows
older than `EVENT_RETENTION` seconds are pruned by the publishers."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from repid.brokers.event_feed import SubscriptionCount
from repid.brokers.sqlite._db import Database

__all__ = ["EVENT_RETENTION", "SqliteEventBus"]

EVENT_RETENTION = 60.0
"""Seconds an event row is kept: a subscriber further behind than that misses events."""
_PRUNE_EVERY = 100
"""Publishes between two prunes (by one broker object)."""
_READ_BATCH = 500


def _last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM repid_events").fetchone()
    return int(row[0])


def _read(conn: sqlite3.Connection, after: int) -> list[tuple[int, bytes]]:
    rows = conn.execute(
        "SELECT seq, data FROM repid_events WHERE seq > ? ORDER BY seq LIMIT ?",
        (after, _READ_BATCH),
    ).fetchall()
    return [(int(seq), bytes(data)) for seq, data in rows]


class SqliteEventBus(SubscriptionCount):
    """`SupportsEventBus` for the SQLite broker (a mixin: the broker sets the attributes)."""

    db: Database
    poll_interval: float
    max_event_size: int | None = None
    _published: int = 0

    async def publish_event(self, data: bytes) -> None:
        now = time.time()
        self._published += 1
        prune = self._published % _PRUNE_EVERY == 1

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO repid_events (at, data) VALUES (?, ?)", (now, data))
            if prune:
                conn.execute("DELETE FROM repid_events WHERE at < ?", (now - EVENT_RETENTION,))

        await self.db.run(insert)

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        after = await self.db.run(_last_seq)
        self._event_subscriptions += 1
        try:
            yield self._poll(after)
        finally:
            self._event_subscriptions -= 1

    async def _poll(self, after: int) -> AsyncIterator[bytes]:
        pause = max(self.poll_interval, 0.01)
        while True:
            rows = await self.db.run(functools.partial(_read, after=after))
            for seq, data in rows:
                after = seq
                yield data
            if len(rows) < _READ_BATCH:
                await asyncio.sleep(pause)
