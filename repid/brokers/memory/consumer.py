"""The in-memory broker's consumer: hands out deliveries with backpressure, browses parts."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Sequence
from typing import Protocol

from repid.brokers.base import BaseConsumer, Delivery
from repid.brokers.memory._store import _Entry, _MemoryQueue, _wake
from repid.data import MessageCategory
from repid.errors import ConsumerClosedError


class Source(Protocol):
    """What the consumer takes from the broker."""

    _queues: dict[str, _MemoryQueue]

    def _queue(self, name: str) -> _MemoryQueue: ...

    def _take(
        self, q: _MemoryQueue, consumer: InMemoryConsumer | None, topics: frozenset[str] | None
    ) -> Delivery | None: ...

    def _next_wakeup(self, q: _MemoryQueue) -> float | None: ...

    def _browse(self, q: _MemoryQueue, category: MessageCategory) -> Iterable[_Entry]: ...


class InMemoryConsumer(BaseConsumer):
    """Hands out the deliveries of one in-memory queue (or browses its delayed and dead parts)."""

    __slots__ = (
        "_broker",
        "_browsed",
        "_capacity_waiter",
        "_category",
        "_closed",
        "_outstanding",
        "_paused",
        "_queue_name",
        "_topics",
        "_unpaused",
        "max_unacked_messages",
    )

    def __init__(
        self,
        broker: Source,
        queue_name: str,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> None:
        self._broker = broker
        self._queue_name = queue_name
        self._topics = frozenset(topics) if topics is not None else None
        self.max_unacked_messages = max_unacked_messages
        self._category = category
        self._outstanding = 0
        self._paused = False
        self._closed = False
        self._unpaused: asyncio.Event | None = None
        self._capacity_waiter: asyncio.Future[None] | None = None
        self._browsed: set[int] | None = None

    async def start(self) -> None:
        self._broker._queue(self._queue_name)  # fail early on an undeclared queue
        self._closed = False

    async def pause(self) -> None:
        self._paused = True

    async def unpause(self) -> None:
        self._paused = False
        if self._unpaused is not None:
            self._unpaused.set()
            self._unpaused = None

    async def finish(self) -> None:
        self._closed = True
        q = self._broker._queues.get(self._queue_name)
        if q is not None:
            q.wake_all()
        await self.unpause()
        if self._capacity_waiter is not None and not self._capacity_waiter.done():
            self._capacity_waiter.set_result(None)

    def _settled(self) -> None:
        self._outstanding -= 1
        waiter = self._capacity_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def consume(self) -> Delivery:
        if self._category is not MessageCategory.NORMAL:
            batch = await self.fetch(1)
            if not batch:
                raise ConsumerClosedError("no more messages in this part of the queue")
            return batch[0]
        broker = self._broker
        limit = self.max_unacked_messages
        while True:
            if self._closed:
                raise ConsumerClosedError(f"consumer of {self._queue_name!r} has finished")
            if self._paused:
                self._unpaused = self._unpaused or asyncio.Event()
                await self._unpaused.wait()
                continue
            if limit is not None and self._outstanding >= limit:
                self._capacity_waiter = asyncio.get_running_loop().create_future()
                await self._capacity_waiter
                continue
            q = broker._queues.get(self._queue_name) or broker._queue(self._queue_name)
            delivery = broker._take(q, self, self._topics)
            if delivery is not None:
                self._outstanding += 1
                return delivery
            loop = asyncio.get_running_loop()
            fut: asyncio.Future[None] = loop.create_future()
            q.waiters.append(fut)
            timeout = broker._next_wakeup(q)
            # A timer resolving the same future, not asyncio.wait_for: on Python 3.11 wait_for
            # can swallow a cancellation that races with the wake-up.
            timer = None if timeout is None else loop.call_later(timeout, _wake, fut)
            try:
                await fut
            except asyncio.CancelledError:
                # Pass a wake-up we may have swallowed on to another waiter.
                if fut.done() and not fut.cancelled():
                    q.wake_one()
                raise
            finally:
                if timer is not None:
                    timer.cancel()

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        broker = self._broker
        q = broker._queue(self._queue_name)
        if self._category is MessageCategory.NORMAL:
            out: list[Delivery] = []
            deadline = time.monotonic() + timeout
            while len(out) < max_count:
                delivery = broker._take(q, self, self._topics)
                if delivery is not None:
                    self._outstanding += 1
                    out.append(delivery)
                    continue
                remaining = deadline - time.monotonic()
                if out or remaining <= 0:
                    break
                try:
                    out.append(await asyncio.wait_for(self.consume(), remaining))
                except TimeoutError:
                    break
            return out
        if self._browsed is None:
            self._browsed = set()
        result: list[Delivery] = []
        for entry in broker._browse(q, self._category):
            if entry.handle in self._browsed:
                continue
            if self._topics is not None and entry.key.topic not in self._topics:
                continue
            self._browsed.add(entry.handle)
            result.append(
                Delivery(
                    entry.key,
                    entry.payload,
                    entry.parameters,
                    entry.handle,
                    category=self._category,
                    raw=entry.raw,
                    decode_error=entry.decode_error,
                )
            )
            if len(result) >= max_count:
                break
        return result
