"""The NATS broker's event bus: core NATS publish/subscribe (no JetStream: nothing is stored)
on the subject `_repid.events.<prefix>`."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from repid.brokers.event_feed import EventFeed, SubscriptionCount
from repid.brokers.nats._link import TRANSIENT, NatsLink
from repid.brokers.nats._names import safe

__all__ = ["NatsEventBus"]


class NatsEventBus(SubscriptionCount):
    """`SupportsEventBus` for the NATS broker (a mixin: the broker sets the attributes)."""

    link: NatsLink
    prefix: str

    @property
    def event_subject(self) -> str:
        """The core NATS subject of this broker's events."""
        return f"_repid.events.{safe(self.prefix) or '_'}"

    @property
    def max_event_size(self) -> int | None:
        """The server's `max_payload`, once connected."""
        return self.link.max_payload

    async def publish_event(self, data: bytes) -> None:
        try:
            await self.link.client.publish(self.event_subject, data)
        except TRANSIENT as exc:
            raise self.link.unreachable(exc, "publish an event") from None

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        feed = EventFeed()

        async def received(msg: Any) -> None:
            feed.put(msg.data)

        client = self.link.client
        try:
            subscription = await client.subscribe(self.event_subject, cb=received)
            await client.flush(timeout=max(1, round(self.link.policy.operation_timeout)))
        except TRANSIENT as exc:
            raise self.link.unreachable(exc, "subscribe to events") from None
        self._event_subscriptions += 1
        try:
            yield feed
        finally:
            self._event_subscriptions -= 1
            feed.close()
            if not client.is_closed:
                # On a connection going away the server forgets the subscription anyway.
                with contextlib.suppress(*TRANSIENT):
                    await subscription.unsubscribe()
