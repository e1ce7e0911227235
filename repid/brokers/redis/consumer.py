"""The Redis broker's consumer: hands out deliveries of one queue, fetched in batches by one
Lua script call, or by a blocking XREADGROUP on its own connection when none is ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import Any, Protocol

from repid._cancel import await_quietly
from repid.brokers.base import BaseConsumer, Delivery
from repid.brokers.redis._beats import ConsumerBeats
from repid.brokers.redis._client import (
    RedisAddress,
    RedisReplyError,
    RespConnection,
    open_connection,
)
from repid.brokers.redis._link import NO_ANSWER, SCRIPTS, Link
from repid.codec import decode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import (
    BrokerUnavailableError,
    ConsumerClosedError,
    DecodeError,
    QueueNotDeclaredError,
    map_broker_errors,
)

__all__ = ["ConsumerBroker", "RedisConsumer", "key_names"]

logger = logging.getLogger("repid.brokers.redis")

_KEY_SUFFIXES = ("s0", "s1", "s2", "r0", "r1", "r2", "d", "de", "x", "i", "m", "c", "h")
_UNLIMITED_BATCH = 100
_PRUNE_INTERVAL = 60.0
"""Seconds between two removals of dead consumers (e.g. of SIGKILLed workers) from the groups."""
_PRUNE_IDLE_MS = 600_000
"""A consumer holding nothing and idle this long is removed (a live one is recreated on read)."""
_NORMAL = MessageCategory.NORMAL


def key_names(prefix: str, queue: str) -> list[bytes]:
    """The keys of one queue; `{queue}` is a hash tag so they share a cluster slot."""
    base = f"{prefix}{{{queue}}}:"
    return [f"{base}{suffix}".encode() for suffix in _KEY_SUFFIXES]


def envelope_field(fields: list[bytes] | None) -> bytes:
    """The envelope of a stream entry: its `m` field (b"" when it has none, e.g. a foreign
    entry, so it is dead-lettered as undecodable), as the Lua scripts' `entry_env` reads it."""
    if fields:
        for i in range(0, len(fields) - 1, 2):
            if fields[i] == b"m":
                return fields[i + 1]
    return b""


def _consumer_name() -> bytes:
    return f"{socket.gethostname()}:{os.getpid()}:{os.urandom(4).hex()}".encode()


class ConsumerBroker(Protocol):
    """What a consumer uses of its broker (`RedisMessageBroker`)."""

    address: RedisAddress | None

    @property
    def transport(self) -> str: ...

    link: Link
    lease_duration: float
    sweep_interval: float
    max_message_size: int | None
    beats: ConsumerBeats
    beat_consumers: bool
    dead_consumer_ms: int

    def keys(self, queue: str) -> list[bytes]: ...

    async def require_declared(self, queue_name: str) -> None: ...

    async def renew(self, deliveries: Sequence[Delivery]) -> None: ...


class RedisConsumer(BaseConsumer):
    """Consumer of one queue (and category) of a `RedisMessageBroker`."""

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
        """The queue read from: its deliveries are settled there, whatever their envelope says."""
        self.keys = broker.keys(queue)
        self._max_size = broker.max_message_size
        self._topics = frozenset(topics) if topics is not None else None
        self.max_unacked_messages = max_unacked_messages
        self._category = category
        self.name = _consumer_name()
        self._outstanding: dict[bytes, Delivery] = {}
        self._buffer: deque[Delivery] = deque()
        self._skipped: list[Delivery] = []
        self._waiters: deque[asyncio.Future[Delivery]] = deque()
        self._changed: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._anticipate = False
        self._paused = False
        self._closed = False
        self._fetched = False
        self._next_sweep = 0.0
        self._next_due: float | None = None
        self._next_prune = 0.0
        self._last_renewal = 0.0
        self._blocking: RespConnection | None = None
        self._blocker: asyncio.Future[None] | None = None
        self._lease_ms = max(1, int(broker.lease_duration * 1000))
        self._streams = {key: p for p, key in enumerate(self.keys[:3])}
        self._browse_after = b"-"
        self._browse_tokens: list[bytes] | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        self._closed = False
        await self._broker.require_declared(self.queue)
        if self._category is _NORMAL and self._broker.beat_consumers:
            await self._broker.beats.add(self, self.keys[12], self.name)

    async def pause(self) -> None:
        self._paused = True

    async def unpause(self) -> None:
        self._paused = False
        self._poke()

    async def finish(self) -> None:
        self._closed = True
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            await await_quietly(pump, Exception)
        self._fail_waiters(ConsumerClosedError(f"consumer of {self.queue!r} has finished"))
        if self._blocking is not None:
            self._blocking.close()
            self._blocking = None
        if self._category is _NORMAL and self._fetched:
            self._buffer.clear()
            self._skipped.clear()
            try:
                holding = await self._broker.link.script(
                    SCRIPTS["finish"], self.keys, [self.name, *self._outstanding], timeout=2.0
                )
            except Exception as exc:  # their leases expire and they are handed out again
                logger.warning("returning unstarted messages of %s failed: %r", self.queue, exc)
                holding = 0
            if not holding:
                self._broker.beats.remove(self)
        else:
            self._broker.beats.remove(self)

    # -- bookkeeping ----------------------------------------------------------------------------

    def settled(self, entry_id: bytes) -> None:
        """A delivery of this consumer was settled: room for another one."""
        if self._outstanding.pop(entry_id, None) is not None:
            self._anticipate = True
            self._poke()
            if self._closed and not self._outstanding:  # finished, and holds nothing now
                self._broker.beats.remove(self)

    def _poke(self) -> None:
        changed = self._changed
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _fail_waiters(self, exc: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def _capacity(self) -> int:
        limit = self.max_unacked_messages
        if limit is None:
            return max(len(self._waiters), 1) if len(self._buffer) < _UNLIMITED_BATCH else 0
        return limit - len(self._outstanding) - len(self._buffer)

    def _hand_out(self, delivery: Delivery) -> Delivery:
        self._outstanding[delivery.handle[1]] = delivery
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
            and (limit is None or len(self._outstanding) < limit)
        ):
            return self._hand_out(self._buffer.popleft())
        fut: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        pump = self._pump
        if pump is None or pump.done():
            self._pump = asyncio.create_task(self._run_pump(), name=f"repid-redis-{self.queue}")
        else:
            self._poke()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                delivery = fut.result()  # handed to us as we were cancelled: keep it for later
                self._outstanding.pop(delivery.handle[1], None)
                self._buffer.appendleft(delivery)
                self._distribute()
            raise

    def _distribute(self) -> None:
        limit = self.max_unacked_messages
        buffer, waiters, outstanding = self._buffer, self._waiters, self._outstanding
        while buffer and waiters and not self._paused:
            if limit is not None and len(outstanding) >= limit:
                return
            fut = waiters.popleft()
            if fut.done():
                continue
            delivery = buffer.popleft()
            outstanding[delivery.handle[1]] = delivery
            fut.set_result(delivery)

    async def _wait_change(self, timeout: float | None) -> None:
        self._changed = fut = asyncio.get_running_loop().create_future()
        if timeout is None:
            await fut
            return
        handle = asyncio.get_running_loop().call_later(timeout, self._poke)
        try:
            await fut
        finally:
            handle.cancel()

    async def _run_pump(self) -> None:
        renew_every = self._broker.lease_duration / 3
        try:
            while not self._closed:
                while self._waiters and self._waiters[0].done():
                    self._waiters.popleft()
                capacity = self._capacity()
                if self._paused or capacity <= 0 or not (self._waiters or self._anticipate):
                    if self._buffer and time.monotonic() - self._last_renewal > renew_every:
                        await self._renew_buffer()
                    if not self._waiters and not self._buffer and not self._anticipate:
                        self._pump = None
                        return  # idle: the next consume() starts a new pump
                    await self._wait_change(renew_every if self._buffer else None)
                    continue
                self._anticipate = False
                batch = await self._fetch_ready(capacity)
                self._buffer.extend(batch)
                if not batch and self._waiters:
                    await self._wait_for_messages(capacity, self._block_timeout())
                if self._last_renewal == 0.0 and self._buffer:
                    self._last_renewal = time.monotonic()
                self._distribute()
        except Exception as exc:
            self._fail_waiters(exc)
            if self._pump is asyncio.current_task():
                self._pump = None

    async def _renew_buffer(self) -> None:
        self._last_renewal = time.monotonic()
        await self._broker.renew([*self._buffer, *self._skipped])

    def _block_timeout(self) -> float:
        now = time.monotonic()
        timeout = max(0.001, self._next_sweep - now)
        if self._next_due is not None:
            timeout = min(timeout, max(0.001, self._next_due - time.time()))
        return timeout

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        if self._category is MessageCategory.DEAD:
            return await self._browse_dead(max_count)
        if self._category is MessageCategory.DELAYED:
            return await self._browse_delayed(max_count)
        limit = self.max_unacked_messages
        out: list[Delivery] = []
        deadline = time.monotonic() + timeout
        while True:
            want = max_count - len(out)
            if limit is not None:
                want = min(want, limit - len(self._outstanding) - len(out))
            if want <= 0:
                break
            while want and self._buffer:
                out.append(self._buffer.popleft())
                want -= 1
            if want:
                batch = await self._fetch_ready(want)
                out.extend(batch)
            if out:
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await self._wait_for_messages(want, min(remaining, self._block_timeout()))
        for delivery in out:
            self._outstanding[delivery.handle[1]] = delivery
        return out

    async def _fetch_ready(self, count: int) -> list[Delivery]:
        try:
            return await self._fetch_script(count)
        except RedisReplyError:  # NOGROUP: the queue was deleted; say so clearly
            await self._broker.require_declared(self.queue)
            raise

    async def _fetch_script(self, count: int) -> list[Delivery]:
        broker = self._broker
        self._fetched = True
        now = time.monotonic()
        due = self._next_due
        sweep = now >= self._next_sweep or (due is not None and time.time() >= due)
        if sweep:
            self._next_sweep = now + broker.sweep_interval
            if now >= self._next_prune:
                self._next_prune = now + _PRUNE_INTERVAL
                await broker.link.script(SCRIPTS["prune"], self.keys, [_PRUNE_IDLE_MS])
        reply = await broker.link.script(
            SCRIPTS["fetch"],
            self.keys,
            [
                self.name,
                count,
                int(time.time() * 1000),
                "1" if sweep else "0",
                self._lease_ms,
                broker.dead_consumer_ms,
            ],
        )
        head = reply[0]
        self._next_due = None if head == -1 else int(head) / 1000
        if reply[1] == 1:  # a dead consumer holds more: claim the rest at the next fetch
            self._next_sweep = 0.0
        make = self._delivery
        out = [
            make(reply[i], reply[i + 1], reply[i + 2], reply[i + 3], reply[i + 4] == 1)
            for i in range(2, len(reply), 5)
        ]
        return self._filter(out) if self._topics is not None else out

    def _filter(self, deliveries: list[Delivery]) -> list[Delivery]:
        topics = self._topics
        assert topics is not None
        kept = []
        for delivery in deliveries:
            if delivery.key.topic in topics:
                kept.append(delivery)
            else:  # held (leased) until finish, so this consumer never sees it again
                self._skipped.append(delivery)
        return kept

    async def _wait_for_messages(self, count: int, timeout: float) -> None:
        """Block until messages arrive (into the buffer) or `timeout` passes.

        One blocking read at a time per consumer: concurrent callers wait for that one.
        """
        blocker = self._blocker
        if blocker is not None:
            await asyncio.wait({blocker}, timeout=timeout)
            return
        self._blocker = blocker = asyncio.get_running_loop().create_future()
        try:
            arrived = await self._block(count, timeout)
            conn = self._broker.link.conn
            if arrived and conn is not None and conn.busy:
                # A producer on this broker may be about to read its reply to the publish we
                # were woken by (Redis writes to the woken reader first). Replies come in order:
                # once a PING sent now is answered, the producer has its reply and resumes
                # before us, so its `enqueued` event precedes the worker's `started`.
                with contextlib.suppress(Exception):
                    await conn.call("PING")
            self._buffer.extend(arrived)
        finally:
            self._blocker = None
            blocker.set_result(None)

    async def _block(self, count: int, timeout: float) -> list[Delivery]:
        conn: Any = self._blocking
        address = self._broker.address
        if self._broker.transport == "redis-py" or address is None:
            conn = await self._broker.link.connection()  # a blocking read takes a pool connection
        elif conn is None or conn.closed:
            conn = self._blocking = await open_connection(
                address, self._broker.link.connect_timeout
            )
        self._fetched = True
        try:
            with map_broker_errors(NO_ANSWER, "Redis is unreachable: a blocking read"):
                async with asyncio.timeout(timeout + self._broker.link.timeout):
                    reply = await self._read_blocking(conn, count, timeout)
        except BrokerUnavailableError:  # the server hangs: drop the connection, the caller retries
            conn.close()
            raise
        except RedisReplyError:
            # The queue was flushed or deleted under us (NOGROUP, UNBLOCKED): say which.
            await self._broker.require_declared(self.queue)
            return []
        if reply is None:
            return []
        out = []
        make = self._delivery
        for stream, entries in reply:
            p = self._streams[stream]
            for entry_id, fields in entries:
                out.append(make(p, entry_id, envelope_field(fields), 1, False))
        out.sort(key=lambda delivery: delivery.handle[0])
        return self._filter(out) if self._topics is not None else out

    async def _read_blocking(self, conn: Any, count: int, timeout: float) -> Any:
        keys = self.keys
        return await conn.call(
            "XREADGROUP",
            "GROUP",
            "repid",
            self.name,
            "COUNT",
            count,
            "BLOCK",
            max(1, int(timeout * 1000)),
            "STREAMS",
            keys[0],
            keys[1],
            keys[2],
            ">",
            ">",
            ">",
        )

    def _delivery(
        self, p: int, entry_id: bytes, envelope: bytes, count: int, redelivered: bool
    ) -> Delivery:
        try:
            key, payload, params = decode_message(envelope, self._max_size)
        except DecodeError as exc:
            return Delivery(
                RoutingKey(f"raw-{entry_id.decode()}", "", self.queue, p),
                "",
                Parameters(),
                (p, entry_id, self, count),
                raw=envelope,
                decode_error=str(exc),
                redelivered=redelivered,
            )
        return tuple.__new__(
            Delivery,
            (key, payload, params, (p, entry_id, self, count), _NORMAL, None, None, redelivered),
        )

    # -- browsing dead and delayed messages ---------------------------------------------------

    def _browsed(self, handle: bytes, envelope: bytes, category: MessageCategory) -> Delivery:
        try:
            key, payload, params = decode_message(envelope)
        except DecodeError as exc:
            return Delivery(
                RoutingKey(f"raw-{handle.decode()}", "", self.queue),
                "",
                Parameters(),
                (self.queue, handle),
                category=category,
                raw=envelope,
                decode_error=str(exc),
            )
        return Delivery(key, payload, params, (self.queue, handle), category=category)

    def _wanted(self, delivery: Delivery) -> bool:
        return self._topics is None or delivery.key.topic in self._topics

    async def _browse_dead(self, max_count: int) -> list[Delivery]:
        link = self._broker.link
        out: list[Delivery] = []
        while len(out) < max_count:
            start = self._browse_after
            entries: Any = await link.call(
                "XRANGE",
                self.keys[8],
                start if start == b"-" else b"(" + start,
                "+",
                "COUNT",
                max_count - len(out),
            )
            if not entries:
                break
            for entry_id, fields in entries:
                self._browse_after = entry_id
                values = dict(zip(fields[::2], fields[1::2], strict=True))
                delivery = self._browsed(entry_id, values.get(b"m", b""), MessageCategory.DEAD)
                raw = values.get(b"raw")
                if raw is not None:  # an undecodable message: its bytes, and why
                    info = delivery.parameters.dead_letter
                    delivery = delivery._replace(
                        raw=raw,
                        decode_error=info.error_message if info is not None else "undecodable",
                    )
                if self._wanted(delivery):
                    out.append(delivery)
        return out

    async def _browse_delayed(self, max_count: int) -> list[Delivery]:
        link = self._broker.link
        if self._browse_tokens is None:
            if not await link.call("EXISTS", self.keys[10]):
                raise QueueNotDeclaredError(self.queue)
            self._browse_tokens = list(await link.call("ZRANGE", self.keys[6], 0, -1))
        out: list[Delivery] = []
        tokens = self._browse_tokens
        while tokens and len(out) < max_count:
            page, tokens[: max_count - len(out)] = tokens[: max_count - len(out)], []
            envelopes = await link.call("HMGET", self.keys[7], *page)
            for token, envelope in zip(page, envelopes, strict=True):
                if envelope is None:
                    continue  # moved or removed meanwhile
                delivery = self._browsed(token, envelope, MessageCategory.DELAYED)
                if self._wanted(delivery):
                    out.append(delivery)
        return out
