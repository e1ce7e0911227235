"""Redis broker: Streams with a consumer group per queue, one stream per priority, delays in a
sorted set, leases reclaimed with XAUTOCLAIM, every multi-key change one Lua script
(`scripts.lua`). Design: docs/internals.md, "The Redis broker". Needs `pip install repid[redis]`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from typing import Any, Literal

from repid._redact import mask_url
from repid.brokers.base import (
    BrokerCapabilities,
    ConnectionPolicy,
    Delivery,
    OutgoingMessage,
    poll_bucket,
)
from repid.brokers.redis._beats import ConsumerBeats
from repid.brokers.redis._client import Arg, RedisAddress, RedisReplyError, encode_head
from repid.brokers.redis._events import RedisEventBus
from repid.brokers.redis._link import DEFAULT_POLICY, SCRIPTS, Link
from repid.brokers.redis._workers import WorkersAndLimits
from repid.brokers.redis.consumer import RedisConsumer, key_names
from repid.codec import encode_message
from repid.data import (
    ArgsBucket,
    BucketT,
    MessageCategory,
    Parameters,
    ResultBucket,
    RoutingKey,
)
from repid.errors import BrokerUnavailableError, MessageTooLargeError, QueueNotDeclaredError
from repid.ids import generated_here

__all__ = ["RedisBucketBroker", "RedisMessageBroker"]

logger = logging.getLogger("repid.brokers.redis")

_ACK_BATCH = 25
"""Acks sent in one script call at most; a full batch leaves at once (overlapping later work)."""
_NO_FAST_PATH = BrokerUnavailableError("no connection of the hand-written client")
_CANCEL_TTL = 24 * 3600
"""Seconds a cancellation request of a running job is kept (if its worker never clears it)."""


def _now_ms() -> int:
    return int(time.time() * 1000)


def _due_ms(params: Parameters) -> str:
    delay = params.delay
    when = delay.next_execution_time or delay.delay_until
    return "" if when is None else str(int(when.timestamp() * 1000))


_CACHED_QUEUES = 1024
"""Queues whose key names (and encoded enqueue heads) are cached; any name can be asked for."""


def _remember(cache: dict[Any, Any], key: Any, value: Any) -> None:
    """Cache `value`, dropping the oldest entry first when the cache is full."""
    if len(cache) >= _CACHED_QUEUES:
        del cache[next(iter(cache))]
    cache[key] = value


def _stale(op: str, key: Delivery) -> None:
    logger.warning(
        "stale %s of message %s in %s ignored: its lease expired and it was handed out again",
        op,
        key.key.id_,
        key.key.queue,
    )


LIVENESS_PING_TIMEOUT = 1.0
"""Seconds a liveness `ping()` waits for the server."""


class _AckBatch:
    """Acks of one queue issued in the same event-loop iteration: one script call for all."""

    __slots__ = ("args", "future")

    def __init__(self, future: asyncio.Future[list[int]]) -> None:
        self.args: list[bytes | str | int] = []
        self.future = future


Transport = Literal["redis-py", "resp"]
"""How a broker built from a DSN talks to Redis: redis-py's asyncio client (Sentinel and
Cluster through `client=`), or repid's own pipelining RESP2 client (one node only)."""


def make_link(
    dsn: str | None, client: Any, transport: Transport, policy: ConnectionPolicy, scripts: Any
) -> tuple[Link, RedisAddress | None]:
    """The link of a broker: on the user's redis-py `client`, or from `dsn` by `transport`."""
    if client is not None:
        from repid.brokers.redis._pylink import PyLink

        return PyLink(client, policy, scripts, owned=False), None
    assert dsn is not None
    address = RedisAddress(dsn)  # checks the DSN (a ConfigurationError quotes it masked)
    if transport == "resp":
        return Link(address, policy, scripts), address
    if transport != "redis-py":
        raise ValueError(f"transport must be 'redis-py' or 'resp', got {transport!r}")
    from repid.brokers.redis._pylink import PyLink, client_from_dsn

    return PyLink(client_from_dsn(dsn, policy), policy, scripts), address


class RedisMessageBroker(WorkersAndLimits, RedisEventBus):
    """A message broker on Redis Streams.

    Args:
        dsn: `redis://[[user]:password@]host[:port][/db]`, `rediss://...` (TLS, with redis-py's
            `ssl_*` query options) or `unix:///path?db=N`. Ignored when `client` is given.
        client: a `redis.asyncio.Redis`, `redis.asyncio.RedisCluster` or Sentinel-managed
            client (`Sentinel(...).master_for(name)`) to use instead of `dsn`; it must not
            decode responses. The caller closes it.
        transport: for `dsn`: "redis-py" (redis-py's asyncio client) or "resp" (repid's own
            pipelining client: one node, no Sentinel or Cluster).
        prefix: prefix of every key the broker writes (several apps can share one Redis).
        lease_duration: seconds a delivery stays owned without renewal; the worker renews it
            every third of that while the actor runs. An expired delivery (a crashed worker's)
            is handed out again.
        max_message_size: largest envelope accepted by `enqueue`, in bytes.
        connect_timeout: seconds one connection attempt may take (default 5).
        operation_timeout: seconds `enqueue` and settlements keep retrying while Redis is
            unreachable before raising `BrokerUnavailableError` (default 10).
        reconnect_backoff: seconds before the first retry after a failed command; later
            retries wait twice as long each time, up to a second (default 0.05).
        sweep_interval: at most this many seconds pass between two moves of due delayed
            messages and reclaims of expired leases by an idle consumer.
        consumer_heartbeat: seconds between two heartbeats of each consumer in its queue's
            heartbeat set (default 0.5).
        dead_consumer_after: a consumer whose last heartbeat is older than this many seconds
            is dead (its worker was killed): the next sweep of a live consumer claims what it
            held at once, without waiting for the lease (default 2; None: only the lease).
    """

    def __init__(
        self,
        dsn: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        transport: Transport = "resp",
        prefix: str = "repid:",
        lease_duration: float = 30.0,
        max_message_size: int | None = 16 * 1024 * 1024,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
        sweep_interval: float = 0.25,
        consumer_heartbeat: float = 0.5,
        dead_consumer_after: float | None = 2.0,
    ) -> None:
        if dead_consumer_after is not None and not dead_consumer_after > consumer_heartbeat > 0:
            raise ValueError("dead_consumer_after must be longer than consumer_heartbeat (> 0)")
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout, operation_timeout, reconnect_backoff, defaults=DEFAULT_POLICY
        )
        self.capabilities = BrokerCapabilities(
            strict_priorities=True,
            native_delays=True,
            native_dead_letters=True,
            lease_renewal=True,
            shared_state=True,
            persistent=True,
            max_message_size=max_message_size,
            lease_duration=lease_duration,
            cancellation=True,
            worker_registry=True,
            actor_limits=True,
            inspection=True,
            liveness=True,
            event_bus=True,
        )
        self.dsn = dsn
        self.prefix = prefix
        self.lease_duration = lease_duration
        self.max_message_size = max_message_size
        self.sweep_interval = min(sweep_interval, lease_duration / 4)
        link, address = make_link(
            dsn, client, transport, self.connection_policy, tuple(SCRIPTS.values())
        )
        self.link = link
        self.address = address
        self.transport = "redis-py" if client is not None else transport
        self.beats = ConsumerBeats(self.link, consumer_heartbeat)
        self.dead_consumer_ms = (
            # Never claimed by heartbeat: a window beyond any lease (the lease decides).
            int(lease_duration * 1000) * 10 + 1
            if dead_consumer_after is None
            else max(1, int(dead_consumer_after * 1000))
        )
        self.beat_consumers = dead_consumer_after is not None
        self._keys: dict[str, list[bytes]] = {}
        self._enqueue_heads: dict[tuple[str, str, int], tuple[int, bytes]] = {}
        """(script, queue, priority) -> the encoded `EVALSHA sha n keys...` of an enqueue."""
        self._acks: dict[str, _AckBatch] = {}
        self._registry = f"{prefix}queues".encode()
        self._cancel_prefix = f"{prefix}cancel:"
        self._init_workers_and_limits()
        self.is_connected = False

    def __repr__(self) -> str:
        where = mask_url(self.dsn) if self.address is not None else repr(self.link)
        return f"RedisMessageBroker({where!r}, prefix={self.prefix!r})"

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the command connection (raises `BrokerUnavailableError` if Redis is down)."""
        await self.link.connection()
        self.link.start_watchdog()
        self.is_connected = True

    async def ping(self) -> bool:
        """Redis answers a PING."""
        await self.link.call("PING", timeout=LIVENESS_PING_TIMEOUT)
        return True

    async def disconnect(self) -> None:
        for limiter in self._limiters.values():
            await limiter.close()
        await self.beats.close()
        await self.link.close()
        self.is_connected = False

    def keys(self, queue: str) -> list[bytes]:
        """The Redis keys of one queue (see `scripts.lua`)."""
        keys = self._keys.get(queue)
        if keys is None:
            keys = key_names(self.prefix, queue)
            _remember(self._keys, queue, keys)
        return keys

    # -- queues -------------------------------------------------------------------------------

    # The registry of queue names is in another cluster slot than the queue: written apart.
    async def queue_declare(self, queue_name: str) -> None:
        await self.link.script(SCRIPTS["declare"], self.keys(queue_name), [_now_ms()])
        await self.link.call("SADD", self._registry, queue_name)

    async def queue_flush(self, queue_name: str) -> None:
        await self.require_declared(queue_name)
        await self.link.script(SCRIPTS["flush"], self.keys(queue_name), ["0"])

    async def queue_delete(self, queue_name: str) -> None:
        await self.link.script(SCRIPTS["flush"], self.keys(queue_name), ["1"])
        await self.link.call("SREM", self._registry, queue_name)

    async def require_declared(self, queue_name: str) -> None:
        """Raise `QueueNotDeclaredError` unless `queue_name` is declared."""
        if not await self.link.call("EXISTS", self.keys(queue_name)[10]):
            raise QueueNotDeclaredError(queue_name)

    async def queue_names(self) -> list[str]:
        """Names of the declared queues."""
        names = await self.link.call("SMEMBERS", self._registry)
        return sorted(name.decode() for name in names)

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Number of messages per part of the queue: ready, delayed, in_flight, dead."""
        reply = await self.link.script(SCRIPTS["counts"], self.keys(queue_name), [])
        if reply == -1:
            raise QueueNotDeclaredError(queue_name)
        ready, delayed, in_flight, dead = reply
        return {"ready": ready, "delayed": delayed, "in_flight": in_flight, "dead": dead}

    # -- publishing ------------------------------------------------------------------------

    def _envelope(self, key: RoutingKey, payload: str, params: Parameters) -> bytes:
        envelope = encode_message(key, payload, params)
        limit = self.max_message_size
        if limit is not None and len(envelope) > limit:
            raise MessageTooLargeError(len(envelope), limit)
        return envelope

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        if params is None:
            params = Parameters()
        envelope = self._envelope(key, payload, params)
        due = _due_ms(params)
        priority = int(key.priority)
        if due:
            name = "enqueue"
            args: tuple[Arg, ...] = (key.id_, envelope, priority, due, _now_ms(), 1)
        else:
            # Ready now: the short script, with only the keys it touches. An id generated in
            # this process is new, so it is not looked up (a retry below does look it up).
            name = "enqueue_now"
            args = (key.id_, envelope, priority, 0 if generated_here(key.id_) else 1)
        conn = self.link.conn
        try:
            if conn is None or conn.closed:
                raise _NO_FAST_PATH
            head = self._enqueue_heads.get((name, key.queue, priority))
            if head is None:
                keys = self._enqueue_keys(name, key.queue, priority)
                head = encode_head("EVALSHA", SCRIPTS[name].sha, len(keys), *keys)
                _remember(self._enqueue_heads, (name, key.queue, priority), head)
            added = await conn.call_with_head(head, args)
        except (BrokerUnavailableError, RedisReplyError):
            # Safe to repeat: a message that did arrive is pending under its id.
            keys = self._enqueue_keys(name, key.queue, priority)
            added = await self.link.script(SCRIPTS[name], keys, [*args[:-1], 1])
        if added == -1:
            raise QueueNotDeclaredError(key.queue)
        if added == 0:
            logger.debug("message %s is already pending in %s; not added again", key.id_, key.queue)

    def _enqueue_keys(self, script: str, queue: str, priority: int) -> list[bytes]:
        """KEYS of `enqueue` (all of the queue's) or `enqueue_now` (the priority's stream, the
        id index, the metadata)."""
        keys = self.keys(queue)
        return keys if script == "enqueue" else [keys[priority], keys[9], keys[10]]

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish several messages in one pipelined write (each one atomically)."""
        envelopes = [self._envelope(key, payload, params) for key, payload, params in messages]
        # Every queue must exist before anything is sent (a deleted one would fail half-way).
        queues = sorted({key.queue for key, _, _ in messages})
        await asyncio.gather(*(self.require_declared(queue) for queue in queues))
        now = _now_ms()
        results = await asyncio.gather(
            *(
                self.link.script(
                    SCRIPTS["enqueue"],
                    self.keys(key.queue),
                    [key.id_, envelope, int(key.priority), _due_ms(params), now, 1],
                )
                for (key, _, params), envelope in zip(messages, envelopes, strict=True)
            )
        )
        for (key, _, _), added in zip(messages, results, strict=True):
            if added == -1:
                raise QueueNotDeclaredError(key.queue)

    # -- settling -------------------------------------------------------------------------------

    async def ack(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return await self._browsed(key, "ack")
        p, entry_id, consumer, count = key.handle
        consumer.settled(entry_id)
        queue = consumer.queue  # where it was read from (the envelope may name another queue)
        batch = self._acks.get(queue)
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._acks[queue] = _AckBatch(loop.create_future())
            loop.call_soon(self._flush_acks, queue, consumer.keys)
        index = len(batch.args) // 5
        batch.args += (p, entry_id, consumer.name, count, key.key.id_)
        if index + 1 >= _ACK_BATCH:  # let Redis work on these while later actors still run
            self._flush_acks(queue, consumer.keys, now=True)
        try:
            results = await batch.future
        except (BrokerUnavailableError, RedisReplyError):
            results = await self.link.script(
                SCRIPTS["ack"], consumer.keys, [p, entry_id, consumer.name, count, key.key.id_]
            )
            index = 0
        if results[index]:
            if results[index] == 2:
                await self.cancel_finished(key.key.id_)
            return True
        _stale("ack", key)
        return False

    def _flush_acks(self, queue: str, keys: list[bytes], now: bool = False) -> None:
        batch = self._acks.pop(queue, None)
        if batch is None:  # already sent (it filled up before the end of the loop step)
            return
        conn = self.link.conn

        def done(reply: asyncio.Future[Any]) -> None:
            if batch.future.done():
                return
            exc = reply.exception()
            if exc is not None:
                batch.future.set_exception(exc)
                batch.future.exception()
            else:
                batch.future.set_result(reply.result())

        if self.transport == "redis-py":
            # redis-py: the batch is one script call of its own
            task = asyncio.ensure_future(self.link.script(SCRIPTS["ack"], keys, [*batch.args]))
            task.add_done_callback(done)
            return
        if conn is None or conn.closed:
            batch.future.set_exception(BrokerUnavailableError("not connected"))
            batch.future.exception()  # retrieved: every waiter falls back on its own
            return
        reply = conn.call("EVALSHA", SCRIPTS["ack"].sha, len(keys), *keys, *batch.args)
        reply.add_done_callback(done)
        if now:
            conn.flush()

    async def _settle(
        self, key: Delivery, op: str, envelope: bytes | str = "", due: str = "", raw: bytes = b""
    ) -> bool:
        p, entry_id, consumer, count = key.handle
        consumer.settled(entry_id)
        result = await self.link.script(
            SCRIPTS["settle"],
            consumer.keys,
            [
                op,
                p,
                entry_id,
                consumer.name,
                count,
                key.key.id_,
                envelope,
                due,
                _now_ms(),
                raw,
            ],
        )
        if result:
            if result == 2:
                await self.cancel_finished(key.key.id_)
            return True
        _stale(op, key)
        return False

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        if key.category is MessageCategory.DEAD:
            return True
        if parameters is None:
            parameters = key.parameters
        envelope = encode_message(key.key, key.payload, parameters)
        if key.category is MessageCategory.DELAYED:
            return await self._browsed(key, "nack", envelope)
        # Undecodable bytes are kept beside the dead letter's envelope (which says why).
        raw = key.raw if key.decode_error is not None and key.raw is not None else b""
        return await self._settle(key, "nack", envelope, raw=raw)

    async def reject(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return True  # a browsed dead or delayed message stays where it is
        return await self._settle(key, "reject")

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        new_params = key.parameters if params is None else params
        envelope = self._envelope(key.key, key.payload if payload is None else payload, new_params)
        if key.category is not MessageCategory.NORMAL:
            return await self._browsed(key, "requeue", envelope, _due_ms(new_params))
        return await self._settle(key, "requeue", envelope, _due_ms(new_params))

    async def _browsed(
        self, key: Delivery, op: str, envelope: bytes | str = "", due: str = ""
    ) -> bool:
        category = "dead" if key.category is MessageCategory.DEAD else "delayed"
        queue, handle = key.handle  # the queue it was browsed in, and its place there
        result = await self.link.script(
            SCRIPTS["browsed"],
            self.keys(queue),
            [category, handle, op, key.key.id_, envelope, due, _now_ms(), key.key.priority],
        )
        return bool(result)

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        by_queue: dict[str, tuple[list[bytes], list[Any]]] = {}
        for delivery in deliveries:
            if delivery.category is not MessageCategory.NORMAL:
                continue
            p, entry_id, consumer, count = delivery.handle
            _, args = by_queue.setdefault(consumer.queue, (consumer.keys, []))
            args.extend((p, entry_id, consumer.name, count))
        for keys, args in by_queue.values():
            await self.link.script(SCRIPTS["renew"], keys, args)

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> RedisConsumer:
        return RedisConsumer(self, queue, topics, max_unacked_messages, category)

    # -- cancellation, workers and limits ------------------------------------------------------

    def _cancel_key(self, id_: str) -> bytes:
        return f"{self._cancel_prefix}{id_}".encode()

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Cancel job `id_`: remove it if waiting ("dequeued"), flag it if running ("requested").

        None when no pending or running message has that id.
        """
        await self.require_declared(queue_name)
        # The flag key of the id is in another cluster slot than the queue: set first (a job
        # acked meanwhile deletes it), and deleted again when nothing runs under that id.
        flag = self._cancel_key(id_)
        await self.link.call("SET", flag, "1", "EX", _CANCEL_TTL)
        outcome = await self.link.script(
            SCRIPTS["cancel"], self.keys(queue_name), [id_, _CANCEL_TTL]
        )
        if outcome != b"requested":
            await self.link.call("DEL", flag)
        return None if outcome is None else str(outcome.decode())

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a pending cancellation request."""
        ids = list(running)
        if not ids:
            return set()
        # One GET per flag, sent together (no MGET: the flags are spread over cluster slots).
        flags = await asyncio.gather(*(self.link.call("GET", self._cancel_key(id_)) for id_ in ids))
        return {id_ for id_, flag in zip(ids, flags, strict=True) if flag is not None}

    async def cancel_finished(self, id_: str) -> None:
        """The worker has cancelled job `id_`: forget the request."""
        await self.link.call("DEL", self._cancel_key(id_))


class RedisBucketBroker:
    """Args or results storage in Redis; each bucket is one key that expires with its TTL.

    Args:
        dsn: the Redis address (as for `RedisMessageBroker`).
        client: a redis-py asyncio client to use instead of `dsn` (as for `RedisMessageBroker`).
        transport: "redis-py" or "resp", for `dsn` (as for `RedisMessageBroker`).
        use_result_bucket: True to store actor results (`ResultBucket`), False for job args.
        prefix: prefix of every key written.
        ttl: expiry of buckets that carry no TTL of their own (None: kept until deleted).
        connect_timeout: seconds one connection attempt may take (default 5).
        operation_timeout: seconds an operation keeps retrying while Redis is unreachable
            (default 10).
        reconnect_backoff: seconds before the first retry after a failed command (default
            0.05), doubling up to a second.
    """

    def __init__(
        self,
        dsn: str = "redis://127.0.0.1:6379/0",
        *,
        client: Any = None,
        transport: Transport = "resp",
        use_result_bucket: bool = False,
        prefix: str = "repid:",
        ttl: timedelta | None = None,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
    ) -> None:
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout, operation_timeout, reconnect_backoff, defaults=DEFAULT_POLICY
        )
        self.use_result_bucket = use_result_bucket
        self.BUCKET_CLASS: type[ArgsBucket] | type[ResultBucket] = (
            ResultBucket if use_result_bucket else ArgsBucket
        )
        self.prefix = prefix
        self.ttl = ttl
        self.link, _ = make_link(dsn, client, transport, self.connection_policy, ())
        self._kind = "result" if use_result_bucket else "args"

    def __repr__(self) -> str:
        return (
            f"RedisBucketBroker({self.link.address!r}, prefix={self.prefix!r}, kind={self._kind})"
        )

    async def connect(self) -> None:
        await self.link.connection()
        self.link.start_watchdog()

    async def disconnect(self) -> None:
        await self.link.close()

    def _key(self, id_: str) -> bytes:
        return f"{self.prefix}{self._kind}:{id_}".encode()

    async def get_bucket(self, id_: str) -> BucketT | None:
        raw = await self.link.call("GET", self._key(id_))
        return None if raw is None else self.BUCKET_CLASS.decode(raw)

    async def store_bucket(self, id_: str, payload: BucketT) -> None:
        ttl = payload.ttl if payload.ttl is not None else self.ttl
        if ttl is None:
            await self.link.call("SET", self._key(id_), payload.encode())
        else:
            ms = max(1, int(ttl.total_seconds() * 1000))
            await self.link.call("SET", self._key(id_), payload.encode(), "PX", ms)

    async def delete_bucket(self, id_: str) -> None:
        await self.link.call("DEL", self._key(id_))

    async def _delete_many(self, ids: Sequence[str]) -> None:
        """Delete several buckets, up to 1,000 keys per `DEL`."""
        for start in range(0, len(ids), 1000):
            await self.link.call("DEL", *(self._key(id_) for id_ in ids[start : start + 1000]))

    async def wait_bucket(self, id_: str, timeout: float | None) -> BucketT | None:
        """Return the bucket once stored, or None after `timeout` seconds (None: no limit).

        Polls with a short backoff (2 ms, growing to 50 ms): a result is seen at most 50 ms
        after it is stored, at a cost of at most 20 small reads a second per waiter.
        """
        return await poll_bucket(
            lambda: self.get_bucket(id_), timeout, first_pause=0.002, max_pause=0.05
        )
