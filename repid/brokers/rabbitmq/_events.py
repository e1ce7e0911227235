"""The RabbitMQ broker's event bus: a fanout exchange `<prefix>repid.events`; each subscription
is an exclusive, auto-delete server-named queue bound to it, on a channel of its own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiormq
from aiormq.abc import DeliveredMessage

from repid.brokers.event_feed import FEED_LIMIT, EventFeed, SubscriptionCount
from repid.brokers.rabbitmq._link import AmqpLink
from repid.brokers.rabbitmq.channel_state import CHANNEL_ERRORS
from repid.errors import BrokerUnavailableError

__all__ = ["RabbitEventBus"]


def _lost(feed: EventFeed, _: object) -> None:
    feed.close(BrokerUnavailableError("the RabbitMQ channel of an event subscription closed"))


class RabbitEventBus(SubscriptionCount):
    """`SupportsEventBus` for the RabbitMQ broker (a mixin: the broker sets the attributes)."""

    prefix: str
    _link: AmqpLink
    max_event_size: int | None = None
    _event_channel: aiormq.abc.AbstractChannel | None = None
    _event_lock: asyncio.Lock | None = None

    @property
    def event_exchange(self) -> str:
        """The fanout exchange of this broker's events."""
        return f"{self.prefix}repid.events"

    async def _events_channel(self) -> aiormq.abc.AbstractChannel:
        """A channel with the exchange declared on it (publishes are not confirmed)."""
        channel = await self._link.new_channel(confirms=False)
        await channel.exchange_declare(
            exchange=self.event_exchange, exchange_type="fanout", durable=True
        )
        return channel

    async def publish_event(self, data: bytes) -> None:
        channel = self._event_channel
        if channel is None or channel.is_closed:
            if self._event_lock is None:
                self._event_lock = asyncio.Lock()
            async with self._event_lock:
                channel = self._event_channel
                if channel is None or channel.is_closed:
                    channel = self._event_channel = await self._events_channel()
        try:
            await channel.basic_publish(data, exchange=self.event_exchange)
        except CHANNEL_ERRORS as exc:
            raise BrokerUnavailableError(f"RabbitMQ did not take an event: {exc!r}") from None

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        feed = EventFeed()

        async def received(message: DeliveredMessage) -> None:
            feed.put(message.body)

        channel = await self._events_channel()
        try:
            declared = await channel.queue_declare(
                "",
                exclusive=True,
                auto_delete=True,
                arguments={"x-max-length": FEED_LIMIT, "x-overflow": "drop-head"},
            )
            queue = declared.queue or ""
            await channel.queue_bind(queue, self.event_exchange)
            await channel.basic_consume(queue, received, no_ack=True)
            channel.closing.add_done_callback(lambda fut: _lost(feed, fut))
            self._event_subscriptions += 1
            try:
                yield feed
            finally:
                self._event_subscriptions -= 1
                with contextlib.suppress(*CHANNEL_ERRORS):
                    await channel.queue_delete(queue)
        finally:
            feed.close()
            with contextlib.suppress(*CHANNEL_ERRORS):
                await channel.close()
