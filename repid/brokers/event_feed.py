"""One subscriber's buffer of published events, shared by the brokers whose client library
hands messages to a callback: the callback `put`s, the subscriber iterates."""

from __future__ import annotations

import asyncio
import logging
from collections import deque

__all__ = ["EventFeed", "SubscriptionCount"]

logger = logging.getLogger("repid.events")

FEED_LIMIT = 10_000
"""Events a subscriber may fall behind by; beyond that the oldest are dropped (at-most-once)."""


class SubscriptionCount:
    """`SupportsEventBus.event_subscriptions` for a broker's event-bus mixin: the mixin adds
    one when a subscription opens and takes it back when it closes."""

    _event_subscriptions: int = 0

    @property
    def event_subscriptions(self) -> int:
        """Subscriptions now open on this broker object."""
        return self._event_subscriptions


class EventFeed:
    """Events received for one subscription, waiting to be read by its iterator.

    Bounded: a subscriber that does not keep up loses the oldest events (logged once per
    subscription) rather than growing without limit. `close()` ends the iteration.
    """

    __slots__ = ("_closed", "_dropped", "_error", "_items", "_limit", "_waiter")

    def __init__(self, limit: int = FEED_LIMIT) -> None:
        self._items: deque[bytes] = deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._dropped = 0

    def put(self, data: bytes) -> None:
        """Add one event (from the client library's callback; never blocks)."""
        if self._closed:
            return
        if len(self._items) >= self._limit:
            self._items.popleft()
            if not self._dropped:
                logger.warning(
                    "an event subscriber fell %d events behind: oldest dropped", self._limit
                )
            self._dropped += 1
        self._items.append(data)
        self._wake()

    def close(self, error: BaseException | None = None) -> None:
        """End the iteration once the buffered events are read: by raising `error` if given
        (the subscription was lost), else by stopping."""
        if not self._closed:
            self._closed = True
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __aiter__(self) -> EventFeed:
        return self

    async def __anext__(self) -> bytes:
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                raise StopAsyncIteration
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()
