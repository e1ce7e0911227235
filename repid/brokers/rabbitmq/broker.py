"""RabbitMQ message broker (aio-pika): durable priority queues, TTL delay queues, dead letters.

Per repid queue `q`: a durable queue `q` (`x-max-priority`), a dead-letter queue `q:dead` fed by
a dead-letter exchange, and delay queues `q:delay:<ms>` whose queue-wide TTL dead-letters each
message back into `q`. Messages are persistent and publishes wait for the publisher confirm unless
the queue is opted out (`fast_queues`). See docs/brokers/rabbitmq.md for the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Collection, Sequence
from typing import TYPE_CHECKING, Any

import aio_pika
import aiormq
from pamqp import commands as spec
from pydantic_core import to_json

from repid.brokers.base import BrokerCapabilities, Delivery, OutgoingMessage
from repid.brokers.rabbitmq._control import Control
from repid.brokers.rabbitmq._publisher import PublishBatcher, supports_batches
from repid.brokers.rabbitmq._state import ProcessState
from repid.brokers.rabbitmq.consumer import (
    CHANNEL_ERRORS,
    DEAD_INFO_HEADER,
    HOLD_LOCALLY,
    ChannelState,
    Handle,
    RabbitConsumer,
    to_delivery,
)
from repid.codec import encode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import (
    BrokerError,
    BrokerUnavailableError,
    MessageTooLargeError,
    QueueNotDeclaredError,
)

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState

__all__ = ["RabbitMessageBroker"]

logger = logging.getLogger("repid.brokers.rabbitmq")

DELAY_LEVELS_MS: tuple[int, ...] = tuple(2**k for k in range(6, 32))
"""TTLs of the delay queues (64 ms to ~24.9 days). A delay hops through the largest level not
longer than what remains, so it is never early and different delays never block each other."""
_MAX_PRIORITY = 2
_QUEUE_VERSION = {"x-queue-version": 2}
"""Classic queues v2 (RabbitMQ 3.10+, the only kind in 4.x): faster persistent confirms."""


def _amqp_priority(priority: int) -> int:
    return _MAX_PRIORITY - priority  # repid: HIGH=0; AMQP: higher number first


class RabbitMessageBroker(ProcessState):
    """A message broker on RabbitMQ, through aio-pika's robust (auto-reconnecting) connection.

    Args:
        dsn: AMQP URL of the server.
        prefix: prepended to every RabbitMQ queue and exchange name repid creates.
        fast_queues: queues whose messages are transient (not written to disk) and whose
            `enqueue()` does not wait for the publisher confirm: faster, but a message can be
            lost if RabbitMQ restarts or the connection drops right after `enqueue()` returned.
        timeout: seconds `enqueue()` and other calls keep trying while RabbitMQ is unreachable
            before raising `BrokerUnavailableError`.
        reconnect_interval: seconds between reconnection attempts.
        max_message_size: the largest envelope `enqueue()` accepts, in bytes.
        unique_window: seconds (after it is due) an id enqueued by this process keeps counting
            as pending unless a worker of this process settles it first; see the docs page on
            what is per process.
        shared_state: a `RedisSharedState` through which every process shares unique ids,
            cancellations, per-actor limits and the worker registry (`capabilities.shared_state`
            becomes True). This broker connects and disconnects it. Without it, those are kept
            per process.
    """

    def __init__(
        self,
        dsn: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        prefix: str = "",
        fast_queues: Collection[str] = (),
        timeout: float = 10.0,
        reconnect_interval: float = 1.0,
        max_message_size: int = 16 * 1024 * 1024,
        unique_window: float = 600.0,
        shared_state: RedisSharedState | None = None,
    ) -> None:
        self.dsn = dsn
        self.prefix = prefix
        self.fast_queues = frozenset(fast_queues)
        self.timeout = timeout
        self.reconnect_interval = reconnect_interval
        self.max_message_size = max_message_size
        self.unique_window = unique_window
        self.capabilities = BrokerCapabilities(
            strict_priorities=True,
            native_delays=True,
            native_dead_letters=True,
            lease_renewal=False,
            shared_state=shared_state is not None,
            persistent=True,
            max_message_size=max_message_size,
            lease_duration=None,
            cancellation=True,
            worker_registry=True,
            actor_limits=True,
            inspection=True,
        )
        self.dead_letter_exchange = f"{prefix}repid.dead"
        self._connection: aio_pika.abc.AbstractRobustConnection | None = None
        self._channels: dict[str, aiormq.abc.AbstractChannel] = {}
        self._channel_lock = asyncio.Lock()
        self._delay_declared: set[tuple[str, int]] = set()
        self._declared: set[str] = set()
        self._msg_ids = itertools.count()
        self._batchers = {"confirm": PublishBatcher(), "fast": PublishBatcher()}
        self._control = Control(self)
        ProcessState.__init__(self, shared_state)
        # A message delivered while the enqueue/requeue that sent it is still returning is
        # handed out only once that call has returned (`enqueued`/`retried` come before `started`).
        self._requeuing: dict[tuple[str, str], list[tuple[RabbitConsumer, Delivery]]] = {}
        self._props: dict[tuple[bool, int], dict[str, Any]] = {
            (persistent, priority): {
                "delivery_mode": 2 if persistent else 1,
                "priority": _amqp_priority(priority),
                "content_type": "application/json",
            }
            for persistent in (True, False)
            for priority in range(_MAX_PRIORITY + 1)
        }

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connection is not None and not self._connection.is_closed:
            return
        try:
            self._connection = await aio_pika.connect_robust(
                self.dsn, timeout=self.timeout, reconnect_interval=self.reconnect_interval
            )
        except (*CHANNEL_ERRORS, TimeoutError) as exc:
            raise BrokerUnavailableError(f"cannot connect to RabbitMQ: {exc!r}") from exc
        if self._state is not None:
            await self._state.connect()

    async def disconnect(self) -> None:
        await self._control.close()
        for batcher in self._batchers.values():
            await batcher.drain()  # unconfirmed publishes still buffered leave first
        connection, self._connection = self._connection, None
        self._channels.clear()
        if connection is not None:
            with contextlib.suppress(*CHANNEL_ERRORS, asyncio.CancelledError):
                await connection.close()
        if self._state is not None:
            await self._state.disconnect()

    async def _new_channel(self, *, confirms: bool) -> aiormq.abc.AbstractChannel:
        """A fresh AMQP channel on the current connection (waits for a reconnection)."""
        connection = self._connection
        if connection is None:
            raise BrokerError("RabbitMessageBroker is not connected; call connect() first")
        try:
            await asyncio.wait_for(connection.ready(), self.timeout)
        except TimeoutError:
            raise BrokerUnavailableError(
                f"RabbitMQ stayed unreachable for {self.timeout}s"
            ) from None
        transport = connection.transport
        if transport is None:
            raise BrokerUnavailableError("RabbitMQ connection is reconnecting")
        channel: aiormq.abc.AbstractChannel = await transport.connection.channel(
            publisher_confirms=confirms
        )
        return channel

    async def _channel(self, kind: str) -> aiormq.abc.AbstractChannel:
        """The shared channel `kind` ("confirm", "fast" or "admin"), reopened when it closed."""
        channel = self._channels.get(kind)
        if channel is not None and not channel.is_closed:
            return channel
        async with self._channel_lock:
            channel = self._channels.get(kind)
            if channel is None or channel.is_closed:
                channel = await self._new_channel(confirms=kind == "confirm")
                self._channels[kind] = channel
            return channel

    async def _admin(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """Run one RPC on the admin channel, retrying connection failures until `timeout`."""
        deadline = time.monotonic() + self.timeout
        backoff = 0.05
        while True:
            channel = await self._channel("admin")
            try:
                return await getattr(channel, operation)(*args, **kwargs)
            except aiormq.exceptions.ChannelClosed:
                raise
            except CHANNEL_ERRORS as exc:
                if time.monotonic() + backoff > deadline:
                    raise BrokerUnavailableError(f"RabbitMQ {operation} failed: {exc!r}") from exc
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    # -- names and queues ---------------------------------------------------------------------

    def _name(self, queue: str) -> str:
        return self.prefix + queue

    def _delay_name(self, queue: str, level: int) -> str:
        return f"{self.prefix}{queue}:delay:{level}"

    async def queue_declare(self, queue_name: str) -> None:
        name = self._name(queue_name)
        dead = name + ":dead"
        # auto_delete: the exchange goes away with the last dead-letter queue bound to it.
        await self._admin(
            "exchange_declare",
            exchange=self.dead_letter_exchange,
            exchange_type="direct",
            durable=True,
            auto_delete=True,
        )
        await self._admin("queue_declare", dead, durable=True, arguments=_QUEUE_VERSION)
        await self._admin("queue_bind", dead, self.dead_letter_exchange, routing_key=dead)
        await self._admin(
            "queue_declare",
            name,
            durable=True,
            arguments={
                **_QUEUE_VERSION,
                "x-max-priority": _MAX_PRIORITY,
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": dead,
            },
        )
        self._declared.add(queue_name)

    async def _check_queue(self, queue_name: str) -> None:
        """Raise `QueueNotDeclaredError` unless the queue exists on the server."""
        try:
            await self._admin("queue_declare", self._name(queue_name), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueNotDeclaredError(queue_name) from None

    async def _purge_or_delete(self, queue_name: str, *, delete: bool) -> None:
        name = self._name(queue_name)
        for level in DELAY_LEVELS_MS:
            await self._admin("queue_delete", self._delay_name(queue_name, level))
        self._delay_declared = {k for k in self._delay_declared if k[0] != queue_name}
        for target in (name, name + ":dead"):
            if delete:
                await self._admin("queue_delete", target)
            else:
                try:
                    await self._admin("queue_purge", target)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    raise QueueNotDeclaredError(queue_name) from None
        self._pending.pop(queue_name, None)
        if self._state is not None:
            await self._state.forget_queue(queue_name)
        for slot in [slot for slot in self._tombstones if slot[0] == queue_name]:
            del self._tombstones[slot]

    async def queue_flush(self, queue_name: str) -> None:
        await self._purge_or_delete(queue_name, delete=False)

    async def queue_delete(self, queue_name: str) -> None:
        await self._purge_or_delete(queue_name, delete=True)
        self._declared.discard(queue_name)

    def queue_names(self) -> list[str]:
        """The queues declared through this broker object (RabbitMQ lists no others to AMQP)."""
        return sorted(self._declared)

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Messages per part of the queue: ready, delayed, in_flight (in this process), dead.

        AMQP does not report unacknowledged messages, so `in_flight` counts the deliveries held
        by consumers of this process only.
        """
        try:
            ready = await self._admin("queue_declare", self._name(queue_name), passive=True)
        except aiormq.exceptions.ChannelNotFoundEntity:
            raise QueueNotDeclaredError(queue_name) from None
        dead = await self._admin("queue_declare", self._name(queue_name) + ":dead", passive=True)
        delayed = 0
        for name in await self._delay_queues(queue_name):
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                reply = await self._admin("queue_declare", name, passive=True)
                delayed += reply.message_count or 0
        in_flight = sum(n for (q, _), n in self._in_flight.items() if q == queue_name)
        return {
            "ready": ready.message_count or 0,
            "delayed": delayed,
            "in_flight": in_flight,
            "dead": dead.message_count or 0,
        }

    async def _delay_queues(self, queue_name: str) -> list[str]:
        """The delay queues of `queue_name` that exist on the server, shortest delay first."""
        found = []
        for level in DELAY_LEVELS_MS:
            name = self._delay_name(queue_name, level)
            if (queue_name, level) in self._delay_declared:
                found.append(name)
                continue
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                await self._admin("queue_declare", name, passive=True)
                found.append(name)
        return found

    async def _declare_delay(self, queue_name: str, level: int) -> None:
        await self._check_queue(queue_name)  # never delay into a queue that does not exist
        await self._admin(
            "queue_declare",
            self._delay_name(queue_name, level),
            durable=True,
            arguments={
                **_QUEUE_VERSION,
                "x-message-ttl": level,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": self._name(queue_name),
            },
        )
        self._delay_declared.add((queue_name, level))

    # -- publishing ------------------------------------------------------------------------

    def _route(self, queue_name: str, params: Parameters) -> tuple[str, int | None]:
        """Where a message goes now: its queue, or the delay queue of the right level."""
        not_before = params.not_before
        if not_before is not None:
            remaining_ms = (not_before - time.time()) * 1000
            if remaining_ms > HOLD_LOCALLY * 1000:
                level = DELAY_LEVELS_MS[0]
                for candidate in DELAY_LEVELS_MS:
                    if candidate > remaining_ms:
                        break
                    level = candidate
                return self._delay_name(queue_name, level), level
        return self._name(queue_name), None

    async def _publish(
        self,
        key: RoutingKey,
        body: bytes,
        params: Parameters,
        *,
        exchange: str = "",
        routing_key: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Publish durably (confirmed) or fast; retry connection failures until `timeout`."""
        queue_name = key.queue
        level: int | None = None
        if routing_key is None:
            routing_key, level = self._route(queue_name, params)
            if level is not None and (queue_name, level) not in self._delay_declared:
                await self._declare_delay(queue_name, level)
        fast = queue_name in self.fast_queues
        values = dict(self._props[(not fast, key.priority)])
        values["message_id"] = str(next(self._msg_ids))
        if headers:
            values["headers"] = headers
        properties = spec.Basic.Properties(**values)
        deadline = time.monotonic() + self.timeout
        backoff = 0.05
        while True:
            try:
                kind = "fast" if fast else "confirm"
                channel = await self._channel(kind)
                if supports_batches(channel):
                    await self._batchers[kind].publish(
                        channel, exchange, routing_key, body, properties, mandatory=not fast
                    )
                else:
                    await channel.basic_publish(  # type: ignore[call-arg]
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=not fast,
                        wait=False,
                    )
                return
            except aiormq.exceptions.PublishError:
                if level is not None:  # the delay queue vanished (flushed elsewhere)
                    self._delay_declared.discard((queue_name, level))
                    await self._declare_delay(queue_name, level)
                    level = None
                    continue
                raise QueueNotDeclaredError(queue_name) from None
            except (TimeoutError, *CHANNEL_ERRORS) as exc:
                if time.monotonic() + backoff > deadline:
                    raise BrokerUnavailableError(
                        f"RabbitMQ stayed unreachable for {self.timeout}s: {exc!r}"
                    ) from exc
                logger.warning("publishing failed (%r); retrying in %.2fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        params = params or Parameters()
        state = self._state
        if state is not None and self._shared_id(key.id_):
            stamp = params.timer.timestamp.timestamp()
            if not await state.claim(key.queue, key.id_, stamp, params.not_before):
                logger.debug("message %s is already pending in %s; not added again", *key[:3:2])
                return
        elif not self._remember(key, params):
            return
        slot = (key.queue, key.id_)
        requeuing = self._requeuing
        requeuing[slot] = []
        try:
            body = encode_message(key, payload, params)
            if len(body) > self.max_message_size:
                raise MessageTooLargeError(len(body), self.max_message_size)
            await self._publish(key, body, params)
        except BaseException:
            self._forget(key)
            raise
        finally:
            parked = requeuing.pop(slot, None)
            if parked:
                for consumer, delivery in parked:
                    consumer._unpark(delivery)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        await asyncio.gather(*(self.enqueue(k, p, m) for k, p, m in messages))

    # -- settling --------------------------------------------------------------------------

    def _settled(self, delivery: Delivery) -> None:
        self._forget(delivery.key)
        self._leave_flight(delivery)

    @contextlib.asynccontextmanager
    async def _owned(self, key: Delivery) -> AsyncIterator[Handle | None]:
        """The live handle of a delivery; a browsed message whose browser has finished is
        found again in its queue (None if it is gone)."""
        handle: Handle = key.handle
        if handle.state.alive or handle.source is None:
            yield handle
            return
        channel = await self._new_channel(confirms=False)
        state = ChannelState(channel)
        try:
            found = None
            while found is None:
                message = await channel.basic_get(handle.source, no_ack=False)
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                again = to_delivery(message, state, key.key.queue, key.category, handle.source)
                if (
                    again.key == key.key
                    and again.raw == key.raw
                    and again.parameters.timer == key.parameters.timer
                ):
                    found = again.handle
            yield found
        finally:
            await state.drain()
            state.alive = False
            with contextlib.suppress(*CHANNEL_ERRORS, asyncio.CancelledError):
                await channel.close()  # the others go back to their queue

    async def ack(self, key: Delivery) -> bool:
        handle: Handle = key.handle
        if key.category is MessageCategory.NORMAL:
            self._settled(key)
            return await handle.state.ack(handle.tag)
        if key.category is MessageCategory.DELAYED:
            self._forget(key.key)
        async with self._owned(key) as owned:
            return owned is not None and await owned.state.ack(owned.tag)

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        if key.category is MessageCategory.DEAD:
            return True
        if key.category is MessageCategory.DELAYED:
            async with self._owned(key) as owned:
                return owned is not None and await self._nack(key, owned, parameters)
        return await self._nack(key, key.handle, parameters)

    async def _nack(self, key: Delivery, handle: Handle, parameters: Parameters | None) -> bool:
        if not handle.state.alive:
            logger.warning("stale nack of message %s ignored", key.key.id_)
            return False
        params = key.parameters if parameters is None else parameters
        dead = self._name(key.key.queue) + ":dead"
        if key.raw is not None:
            info = params.dead_letter
            headers = {DEAD_INFO_HEADER: to_json(info.encode()).decode()} if info else None
            body = key.raw
        else:
            headers = None
            body = encode_message(key.key, key.payload, params)
        await self._publish(
            key.key,
            body,
            params,
            exchange=self.dead_letter_exchange,
            routing_key=dead,
            headers=headers,
        )
        if key.category is MessageCategory.NORMAL:
            self._settled(key)
        else:
            self._forget(key.key)
        return await handle.state.ack(handle.tag)

    async def reject(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return True  # a browsed dead/delayed message stays where it is
        handle: Handle = key.handle
        self._leave_flight(key)
        return await handle.state.settle_now(handle.tag, requeue=True)

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        if key.category is not MessageCategory.NORMAL:
            async with self._owned(key) as owned:
                return owned is not None and await self._requeue(key, owned, payload, params)
        return await self._requeue(key, key.handle, payload, params)

    async def _requeue(
        self, key: Delivery, handle: Handle, payload: str | None, params: Parameters | None
    ) -> bool:
        if not handle.state.alive:
            logger.warning("stale requeue of message %s ignored", key.key.id_)
            return False
        new_params = key.parameters if params is None else params
        body = encode_message(key.key, key.payload if payload is None else payload, new_params)
        slot = (key.key.queue, key.key.id_)
        self._requeuing.setdefault(slot, [])
        try:
            await self._publish(key.key, body, new_params)
            if key.category is MessageCategory.NORMAL:
                self._leave_flight(key)
            if self._state is not None and self._shared_id(key.key.id_):
                # Still pending (a retry, the next tick, a dead letter sent back to work).
                stamp = new_params.timer.timestamp.timestamp()
                await self._state.renew(key.key.queue, key.key.id_, stamp, new_params.not_before)
            elif key.category is MessageCategory.DEAD:
                pending = self._pending.setdefault(key.key.queue, OrderedDict())
                pending[key.key.id_] = self._pending_entry(new_params, time.time())
            return await handle.state.ack(handle.tag)
        finally:
            for consumer, parked in self._requeuing.pop(slot, ()):
                consumer._unpark(parked)

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        """Nothing to renew: RabbitMQ keeps a delivery until its channel closes."""

    async def _delay_again(self, delivery: Delivery) -> None:
        """An early message reached its queue (a delay hop ended): send it to the next hop."""
        handle: Handle = delivery.handle
        try:
            body = encode_message(delivery.key, delivery.payload, delivery.parameters)
            await self._publish(delivery.key, body, delivery.parameters)
        except Exception:
            logger.exception("re-delaying message %s failed; returning it", delivery.key.id_)
            await handle.state.settle_now(handle.tag, requeue=True)
            return
        await handle.state.ack(handle.tag)

    # -- consumers -----------------------------------------------------------------------------

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> RabbitConsumer:
        return RabbitConsumer(self, queue, topics, max_unacked_messages, category)

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Cancel job `id_`: "requested" if it runs in this process or in a worker process that
        answers within half a second; else "dequeued" if it is known to wait (with shared
        state: a user-given id pending anywhere, or an id this process enqueued; without: an
        id this process enqueued and has not seen settled); else None.

        A dequeued message stays in RabbitMQ (a queue cannot drop one message from its middle)
        until it is delivered; then consumers drop it without running it: those of every
        process with shared state, those of this process without.
        """
        if self._in_flight.get((queue_name, id_)):
            self._cancel_requests.add(id_)
            return "requested"
        state = self._state
        if state is not None:
            stamp = None
            if not self._shared_id(id_):
                pending = self._pending.get(queue_name)
                known = None if pending is None else pending.pop(id_, None)
                if known is not None and known[1] > time.time():
                    stamp = known[0]
            return await state.cancel(queue_name, id_, stamp)
        try:
            if await self._control.ask(queue_name, id_):
                return "requested"  # a worker in another process runs it
        except (*CHANNEL_ERRORS, BrokerError) as exc:
            logger.warning("asking other processes to cancel %s failed: %r", id_, exc)
        if self._take_pending(queue_name, id_):
            return "dequeued"
        return None
