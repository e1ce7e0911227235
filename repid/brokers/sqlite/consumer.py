"""The SQLite broker's consumer: leases ready rows in batches with one `UPDATE ... RETURNING`.

Callers of `consume()` that arrive together share one claim (of as many rows as there are
callers, within the backpressure limit). When nothing is ready the consumer sleeps until a
commit in this process wakes it, or until its poll interval passes: it starts at
`MIN_POLL` seconds after a claim found work and doubles up to the broker's `poll_interval`,
which bounds the pick-up latency of a message enqueued by another process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Sequence
from typing import Protocol

from repid.brokers.base import Delivery
from repid.brokers.pump import PumpConsumer
from repid.brokers.sqlite import _db, _sql
from repid.brokers.sqlite._db import Database
from repid.codec import decode_message
from repid.data import MessageCategory, Parameters, PrioritiesT, RoutingKey
from repid.errors import ConsumerClosedError, DecodeError

__all__ = ["MIN_POLL", "SqliteConsumer", "decode_row"]

logger = logging.getLogger("repid.brokers.sqlite")

MIN_POLL = 0.005
"""Seconds an idle consumer first waits before looking again (it then backs off)."""
_UNLIMITED_BATCH = 100
_NORMAL = MessageCategory.NORMAL


def _retrieve(task: asyncio.Task[int]) -> None:
    """A claim nobody awaited failed (the file is closing): the next `consume()` retries."""
    if not task.cancelled() and task.exception() is not None:
        logger.debug("claim failed: %r", task.exception())


class ConsumerBroker(Protocol):
    """What a consumer uses of its broker (`SqliteMessageBroker`)."""

    db: Database
    lease_duration: float
    poll_interval: float
    max_message_size: int | None


def decode_row(
    queue: str,
    seq: int,
    envelope: bytes,
    raw: bytes | None,
    handle: object,
    category: MessageCategory = _NORMAL,
    redelivered: bool = False,
    max_size: int | None = None,
) -> Delivery:
    """A row as a delivery (undecodable bytes, or more than `max_size` of them, become a
    delivery with `decode_error`)."""
    try:
        key, payload, params = decode_message(envelope, max_size)
    except DecodeError as exc:
        placeholder = RoutingKey(f"raw-{seq}", "", queue, PrioritiesT.MEDIUM)
        return Delivery(
            placeholder,
            "",
            Parameters(),
            handle,
            category=category,
            raw=envelope,
            decode_error=str(exc),
            redelivered=redelivered,
        )
    return Delivery(key, payload, params, handle, category, raw, None, redelivered)


class SqliteConsumer(PumpConsumer):
    """Consumer of one queue (and category) of a `SqliteMessageBroker`."""

    _pump_name = "repid-sqlite"

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
        self._claiming: asyncio.Task[int] | None = None
        self._poll = MIN_POLL
        self._registered = False
        self._browse_after = 0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        queue = self.queue
        await self._broker.db.run(lambda conn: _sql.require(conn, queue))
        self._closed = False
        if self._category is _NORMAL and not self._registered:
            _db.register(self._broker.db.path, self)
            self._registered = True

    async def finish(self) -> None:
        if self._registered:
            _db.unregister(self._broker.db.path, self)
            self._registered = False
        unstarted = await self._stop_pump()
        claiming = self._claiming
        if claiming is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(claiming)
        unstarted.extend(self._buffer)  # a claim that landed after the pump stopped
        self._buffer.clear()
        if unstarted:  # leased but never handed out: back to the front of the queue at once
            items = [(d.handle[0], d.handle[1]) for d in unstarted]
            try:
                await self._broker.db.run(
                    lambda conn: _sql.reject(conn, items[::-1]), touches=(self.queue,)
                )
            except Exception as exc:  # their leases expire and they are handed out again
                logger.warning("returning unstarted messages of %s failed: %r", self.queue, exc)

    # -- bookkeeping ----------------------------------------------------------------------------

    def settled(self, seq: int) -> None:
        if self._outstanding.pop(seq, None) is not None:
            self.poke()
            if (
                self._claiming is None
                and self.max_unacked_messages is not None
                and not (self._closed or self._paused)
            ):
                # Claim the freed room at once: the claim joins the settlements' transaction
                # (issued in this loop step), and the next `consume()` finds its delivery ready.
                self._claiming = asyncio.ensure_future(self._claim(None))
                self._claiming.add_done_callback(_retrieve)

    def _capacity(self) -> int:
        room = self._room()
        return _UNLIMITED_BATCH - len(self._buffer) if room is None else room

    async def _refill(self, wanted: int) -> int:
        """Claim up to `wanted` rows into the buffer (one claim at a time; cancel-safe: a
        cancelled caller leaves the claimed rows in the buffer for the next one)."""
        if self._claiming is None:
            count = min(wanted, self._capacity())
            if count <= 0:
                return 0
            self._claiming = asyncio.ensure_future(self._claim(count))
        return await asyncio.shield(self._claiming)

    async def _claim(self, count: int | None) -> int:
        """Lease up to `count` rows into the buffer (None: as many as there is room for)."""
        broker = self._broker
        queue, lease, topics = self.queue, broker.lease_duration, self._topics
        if count is None:
            count = self._capacity()
            if count <= 0 or self._closed:
                self._claiming = None
                return 0
        try:
            rows = await broker.db.run(lambda conn: _sql.claim(conn, queue, count, lease, topics))
        finally:
            self._claiming = None
        for seq, token, envelope, raw, redelivered in rows:
            self._buffer.append(
                decode_row(
                    queue,
                    seq,
                    envelope,
                    raw,
                    (seq, token, self),
                    redelivered=bool(redelivered),
                    max_size=broker.max_message_size,
                )
            )
        if rows:
            self._poll = MIN_POLL
            self._distribute()
        return len(rows)

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
                if self._buffer:
                    self._distribute()
                if self._paused or self._buffer or self._capacity() <= 0:
                    await self._wait_change(None)  # paused, or at the backpressure limit
                    continue
                if await self._refill(waiting) or self._buffer:
                    self._distribute()
                    continue
                await self._wait_change(self._poll)
                self._poll = min(self._poll * 2, self._broker.poll_interval)
        except Exception as exc:
            self._pump_failed(exc)

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        if self._category is not _NORMAL:
            return await self._browse(max_count)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        out: list[Delivery] = []
        while len(out) < max_count and not self._closed:
            if self._buffer:
                out.append(self._hand_out(self._buffer.popleft()))
                continue
            if self._capacity() <= 0:
                break
            if await self._refill(max_count - len(out)) or self._buffer:
                continue
            remaining = deadline - loop.time()
            if out or remaining <= 0:
                break
            await self._wait_change(min(self._poll, remaining))
            self._poll = min(self._poll * 2, self._broker.poll_interval)
        return out

    async def _browse(self, max_count: int) -> list[Delivery]:
        state = _sql.DEAD if self._category is MessageCategory.DEAD else _sql.DELAYED
        queue = self.queue
        out: list[Delivery] = []
        while len(out) < max_count:
            rows = await self._broker.db.run(
                functools.partial(
                    _sql.browse, queue=queue, state=state, after=self._browse_after, count=max_count
                )
            )
            if not rows:
                break
            for seq, envelope, raw in rows:
                self._browse_after = seq
                delivery = decode_row(queue, seq, envelope, raw, seq, self._category)
                if self._topics is not None and delivery.key.topic not in self._topics:
                    continue
                if raw is not None and delivery.decode_error is None:
                    delivery = delivery._replace(raw=raw)
                out.append(delivery)
                if len(out) >= max_count:
                    break
        return out
