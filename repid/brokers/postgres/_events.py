"""The PostgreSQL broker's event bus: NOTIFY on a channel of the broker's schema and prefix,
each subscription a LISTEN connection of its own (asyncpg `add_listener`)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from repid.brokers.event_feed import EventFeed, SubscriptionCount
from repid.brokers.postgres._link import Link
from repid.brokers.postgres._schema import Names
from repid.errors import BrokerUnavailableError

__all__ = ["PostgresEventBus"]

MAX_NOTIFY_PAYLOAD = 7_900
"""NOTIFY takes at most 8000 bytes of payload; longer event tracebacks are cut to fit."""


_NOTIFY = "SELECT pg_notify($1, $2)"


def _lost(feed: EventFeed, conn: Any) -> None:
    feed.close(BrokerUnavailableError("the LISTEN connection of an event subscription closed"))


class PostgresEventBus(SubscriptionCount):
    """`SupportsEventBus` for the PostgreSQL broker (a mixin: the broker sets the attributes)."""

    link: Link
    names: Names
    max_event_size: int | None = MAX_NOTIFY_PAYLOAD

    @property
    def event_channel(self) -> str:
        """The LISTEN/NOTIFY channel of this broker's events."""
        return f"{self.names.channel}_events"

    async def publish_event(self, data: bytes) -> None:
        channel, payload = self.event_channel, data.decode()
        await self.link.once(lambda conn: conn.execute(_NOTIFY, channel, payload))

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        feed = EventFeed()

        def received(conn: Any, pid: int, channel: str, payload: str) -> None:
            feed.put(payload.encode())

        conn = await self.link.connect_once()
        try:
            conn.add_termination_listener(functools.partial(_lost, feed))
            try:
                await conn.add_listener(self.event_channel, received)
            except Exception as exc:
                raise BrokerUnavailableError(f"LISTEN on PostgreSQL failed: {exc}") from exc
            self._event_subscriptions += 1
            try:
                yield feed
            finally:
                self._event_subscriptions -= 1
        finally:
            feed.close()
            if not conn.is_closed():
                try:
                    await conn.close(timeout=2.0)
                except Exception:
                    conn.terminate()
