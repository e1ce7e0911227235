"""The PostgreSQL broker's consumer: claims batches of ready rows with `FOR UPDATE SKIP LOCKED`
for the callers waiting in `consume()`, and sleeps until a NOTIFY, a due delayed message, the
next lease sweep or the poll interval when there is nothing to claim.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence
from typing import Protocol

from repid._cancel import await_quietly
from repid.brokers.base import BaseConsumer, Delivery
from repid.data import MessageCategory
from repid.errors import ConsumerClosedError

__all__ = ["ConsumerBroker", "PostgresConsumer"]

logger = logging.getLogger("repid.brokers.postgres")

_NORMAL = MessageCategory.NORMAL
_UNLIMITED_BATCH = 100


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class ConsumerBroker(Protocol):
    """What a consumer uses of its broker (`PostgresMessageBroker`)."""

    poll_interval: float

    async def require_declared(self, queue_name: str) -> None: ...

    async def claim(
        self, queue: str, count: int, topics: frozenset[str] | None, consumer: PostgresConsumer
    ) -> list[Delivery]: ...

    async def next_wakeup(self, queue: str) -> float: ...

    async def browse(
        self, queue: str, category: MessageCategory, count: int, seen: list[int]
    ) -> list[Delivery]: ...

    def subscribe(self, queue: str, consumer: PostgresConsumer) -> None: ...

    def unsubscribe(self, queue: str, consumer: PostgresConsumer) -> None: ...

    async def reject(self, key: Delivery) -> bool: ...


class PostgresConsumer(BaseConsumer):
    """Consumer of one queue (and category) of a `PostgresMessageBroker`."""

    def __init__(
        self,
        broker: ConsumerBroker,
        queue: str,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> None:
        self._broker = broker
        self.queue = queue
        self._topics = frozenset(topics) if topics is not None else None
        self.max_unacked_messages = max_unacked_messages
        self._category = category
        self.outstanding: set[int] = set()
        self._buffer: deque[Delivery] = deque()
        self._waiters: deque[asyncio.Future[Delivery]] = deque()
        self._changed: list[asyncio.Future[None]] = []
        self._pump: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False
        self._notified = False
        self._seen: list[int] = []

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._closed = False
        await self._broker.require_declared(self.queue)
        if self._category is _NORMAL:
            self._broker.subscribe(self.queue, self)

    async def pause(self) -> None:
        self._paused = True

    async def unpause(self) -> None:
        self._paused = False
        self.poke()

    async def finish(self) -> None:
        self._closed = True
        self._broker.unsubscribe(self.queue, self)
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            await await_quietly(pump, Exception)
        error = ConsumerClosedError(f"consumer of {self.queue!r} has finished")
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)
        unstarted, self._buffer = list(self._buffer), deque()
        for delivery in unstarted:  # claimed, never handed out: back to the queue at once
            try:
                await self._broker.reject(delivery)
            except Exception as exc:  # their leases run out and the sweep returns them
                logger.warning("returning an unstarted message of %s failed: %r", self.queue, exc)

    # -- bookkeeping ----------------------------------------------------------------------------

    def settled(self, row_id: int) -> None:
        """A delivery of this consumer was settled: room for another one."""
        if row_id in self.outstanding:
            self.outstanding.discard(row_id)
            self.poke()

    def notified(self) -> None:
        """A NOTIFY said the queue has a ready message."""
        self._notified = True
        self.poke()

    def poke(self) -> None:
        """Wake every wait for a change (a settlement, a NOTIFY, an unpause)."""
        changed, self._changed = self._changed, []
        for fut in changed:
            if not fut.done():
                fut.set_result(None)

    def _capacity(self, wanted: int) -> int:
        limit = self.max_unacked_messages
        if limit is None:
            return min(wanted, _UNLIMITED_BATCH)
        return min(wanted, limit - len(self.outstanding) - len(self._buffer))

    def _hand_out(self, delivery: Delivery) -> Delivery:
        self.outstanding.add(delivery.handle[0])
        return delivery

    # -- consuming ------------------------------------------------------------------------------

    async def consume(self) -> Delivery:
        if self._category is not _NORMAL:
            batch = await self.fetch(1)
            if not batch:
                raise ConsumerClosedError("no more messages in this part of the queue")
            return batch[0]
        if self._closed:
            raise ConsumerClosedError(f"consumer of {self.queue!r} has finished")
        limit = self.max_unacked_messages
        if (
            self._buffer
            and not self._waiters
            and not self._paused
            and (limit is None or len(self.outstanding) < limit)
        ):
            return self._hand_out(self._buffer.popleft())
        fut: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        pump = self._pump
        if pump is None or pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name=f"repid-postgres-{self.queue}")
        else:
            self.poke()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                delivery = fut.result()  # handed to us as we were cancelled: keep it for later
                self.outstanding.discard(delivery.handle[0])
                self._buffer.appendleft(delivery)
                self._distribute()
            raise

    def _distribute(self) -> None:
        limit = self.max_unacked_messages
        while self._buffer and self._waiters and not self._paused:
            if limit is not None and len(self.outstanding) >= limit:
                return
            fut = self._waiters.popleft()
            if fut.done():
                continue
            fut.set_result(self._hand_out(self._buffer.popleft()))

    async def _wait_change(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._changed.append(fut)
        handle = None if timeout is None else loop.call_later(timeout, _wake, fut)
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()

    async def _run_pump(self) -> None:
        try:
            while not self._closed:
                while self._waiters and self._waiters[0].done():
                    self._waiters.popleft()
                if not self._waiters:
                    self._pump = None
                    return  # idle: the next consume() starts a new pump
                capacity = self._capacity(len(self._waiters) - len(self._buffer))
                if self._paused or capacity <= 0:
                    await self._wait_change(None)
                    continue
                self._notified = False
                batch = await self._broker.claim(self.queue, capacity, self._topics, self)
                self._buffer.extend(batch)
                self._distribute()
                if not batch and not self._notified:
                    wait = await self._broker.next_wakeup(self.queue)
                    if not self._notified:
                        await self._wait_change(wait)
        except Exception as exc:
            while self._waiters:
                fut = self._waiters.popleft()
                if not fut.done():
                    fut.set_exception(exc)
            if self._pump is asyncio.current_task():
                self._pump = None

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        if self._category is not _NORMAL:
            batch = await self._broker.browse(self.queue, self._category, max_count, self._seen)
            self._seen.extend(delivery.handle[0] for delivery in batch)
            return batch
        out: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while True:
            want = self._capacity(max_count - len(out))
            if want <= 0:
                break
            while want and self._buffer:
                out.append(self._buffer.popleft())
                want -= 1
            if want:
                self._notified = False
                out.extend(await self._broker.claim(self.queue, want, self._topics, self))
            remaining = deadline - time.monotonic()
            if out or remaining <= 0:
                break
            if not self._notified:
                wait = await self._broker.next_wakeup(self.queue)
                if not self._notified:
                    await self._wait_change(min(remaining, wait))
        for delivery in out:
            self.outstanding.add(delivery.handle[0])
        return out
