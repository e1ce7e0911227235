"""The PostgreSQL broker's consumer: claims batches of ready rows with `FOR UPDATE SKIP LOCKED`
for the callers waiting in `consume()`, and sleeps until a NOTIFY, a due delayed message, the
next lease sweep or the poll interval when there is nothing to claim.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Protocol

from repid.brokers.base import Delivery
from repid.brokers.pump import PumpConsumer
from repid.data import MessageCategory
from repid.errors import ConsumerClosedError

__all__ = ["ConsumerBroker", "PostgresConsumer"]

logger = logging.getLogger("repid.brokers.postgres")

_NORMAL = MessageCategory.NORMAL
_UNLIMITED_BATCH = 100


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


class PostgresConsumer(PumpConsumer):
    """Consumer of one queue (and category) of a `PostgresMessageBroker`."""

    _pump_name = "repid-postgres"

    def __init__(
        self,
        broker: ConsumerBroker,
        queue: str,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> None:
        self._init_pump(queue, max_unacked_messages)
        self._broker = broker
        self._topics = frozenset(topics) if topics is not None else None
        self._category = category
        self._notified = False
        self._seen: list[int] = []

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._closed = False
        await self._broker.require_declared(self.queue)
        if self._category is _NORMAL:
            self._broker.subscribe(self.queue, self)

    async def finish(self) -> None:
        self._broker.unsubscribe(self.queue, self)
        for delivery in await self._stop_pump():  # claimed, never handed out: back at once
            try:
                await self._broker.reject(delivery)
            except Exception as exc:  # their leases run out and the sweep returns them
                logger.warning("returning an unstarted message of %s failed: %r", self.queue, exc)

    # -- bookkeeping ----------------------------------------------------------------------------

    def settled(self, row_id: int) -> None:
        """A delivery of this consumer was settled: room for another one."""
        if self._outstanding.pop(row_id, None) is not None:
            self.poke()

    def notified(self) -> None:
        """A NOTIFY said the queue has a ready message."""
        self._notified = True
        self.poke()

    def _capacity(self, wanted: int) -> int:
        room = self._room()
        return min(wanted, _UNLIMITED_BATCH if room is None else room)

    # -- consuming ------------------------------------------------------------------------------

    async def consume(self) -> Delivery:
        if self._category is not _NORMAL:
            batch = await self.fetch(1)
            if not batch:
                raise ConsumerClosedError("no more messages in this part of the queue")
            return batch[0]
        return await self._consume_ready()

    async def _run_pump(self) -> None:
        try:
            while not self._closed:
                waiting = self._live_waiters()
                if not waiting:
                    self._pump = None
                    return  # idle: the next consume() starts a new pump
                capacity = self._capacity(waiting - len(self._buffer))
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
            self._pump_failed(exc)

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
            self._hand_out(delivery)
        return out
