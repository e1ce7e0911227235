"""The Redis broker's event bus: PUBLISH on `<prefix>events`, each subscription a redis-py
`PubSub` on its own connection (also on a Cluster, whose classic pub/sub reaches every node)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from repid.brokers.base import ConnectionPolicy
from repid.brokers.event_feed import SubscriptionCount
from repid.brokers.redis._link import Link

__all__ = ["RedisEventBus"]


class RedisEventBus(SubscriptionCount):
    """`SupportsEventBus` for the Redis broker (a mixin: the broker sets the attributes)."""

    link: Link
    prefix: str
    dsn: str
    connection_policy: ConnectionPolicy
    max_event_size: int | None = None

    @property
    def event_channel(self) -> bytes:
        """The pub/sub channel of this broker's events."""
        return f"{self.prefix}events".encode()

    async def publish_event(self, data: bytes) -> None:
        await self.link.call("PUBLISH", self.event_channel, data)

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        from repid.brokers.redis._pylink import PyLink, _Mapped, client_from_dsn

        link = self.link
        if isinstance(link, PyLink):
            client: Any = link.client
            where, owned = link.where, False
        else:  # the hand-written client has no pub/sub: a redis-py connection of its own
            client = client_from_dsn(self.dsn, self.connection_policy)
            where, owned = repr(self), True
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            with _Mapped(where):
                await pubsub.subscribe(self.event_channel)
            self._event_subscriptions += 1
            try:
                yield _messages(pubsub, _Mapped(where))
            finally:
                self._event_subscriptions -= 1
                with contextlib.suppress(Exception):  # closing the connection ends it anyway
                    await pubsub.unsubscribe()
        finally:
            await pubsub.aclose()
            if owned:
                await client.aclose()


async def _messages(pubsub: Any, mapped: Any) -> AsyncIterator[bytes]:
    while True:
        with mapped:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=None)
        if message is not None and message.get("type") == "message":
            yield message["data"]
