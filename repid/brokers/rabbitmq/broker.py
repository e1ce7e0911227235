"""RabbitMQ message broker (aio-pika): durable priority queues, TTL delay queues, dead letters.
The layout on the server and the guarantees are in docs/brokers/rabbitmq.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Collection, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pydantic_core import to_json

from repid._cancel import await_quietly
from repid.brokers.base import BrokerCapabilities, ConnectionPolicy, Delivery, OutgoingMessage
from repid.brokers.rabbitmq import _compat
from repid.brokers.rabbitmq._control import Control
from repid.brokers.rabbitmq._events import RabbitEventBus
from repid.brokers.rabbitmq._link import AmqpLink
from repid.brokers.rabbitmq._nodes import masked, split_nodes
from repid.brokers.rabbitmq._state import ProcessState
from repid.brokers.rabbitmq._topology import MAX_PRIORITY, Topology
from repid.brokers.rabbitmq.channel_state import (
    CHANNEL_ERRORS,
    DEAD_INFO_HEADER,
    ChannelState,
    Handle,
    to_delivery,
)
from repid.brokers.rabbitmq.consumer import HOLD_LOCALLY, RabbitConsumer
from repid.codec import encode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import BrokerError, MessageTooLargeError, QueueNotDeclaredError

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState

__all__ = ["RabbitMessageBroker"]

logger = logging.getLogger("repid.brokers.rabbitmq")

_DEFAULT_POLICY = ConnectionPolicy(
    connect_timeout=10.0, operation_timeout=10.0, reconnect_backoff=1.0
)
"""The defaults from before `ConnectionPolicy` (`timeout=10.0`, `reconnect_interval=1.0`)."""


def _amqp_priority(priority: int) -> int:
    return MAX_PRIORITY - priority  # repid: HIGH=0; AMQP: higher number first


class RabbitMessageBroker(ProcessState, RabbitEventBus):
    """A message broker on RabbitMQ, through aio-pika's robust (auto-reconnecting) connection.

    Args:
        dsn: AMQP URL of the server; for a cluster, a list of the nodes' URLs or one string
            of them separated by commas (`amqp://user:pass@n1,n2:5673,n3/vhost` shares the
            user, password and vhost). The broker connects to the first node that answers and,
            when its connection is lost, moves on to the next node at each reconnection attempt.
        prefix: prepended to every RabbitMQ queue and exchange name repid creates.
        fast_queues: queues whose messages are transient (not written to disk) and whose
            `enqueue()` does not wait for the publisher confirm: faster, but a message can be
            lost if RabbitMQ restarts or the connection drops right after `enqueue()` returned.
        connect_timeout: seconds to open the connection, and to wait for a reconnection
            before a call fails with `BrokerUnavailableError`.
        operation_timeout: seconds `enqueue()` and other calls keep trying while RabbitMQ is
            unreachable before raising `BrokerUnavailableError`.
        reconnect_backoff: seconds between reconnection attempts.
        timeout: the older name of both `connect_timeout` and `operation_timeout` (each
            given explicitly wins).
        reconnect_interval: the older name of `reconnect_backoff`.
        max_message_size: the largest envelope `enqueue()` accepts, in bytes.
        unique_window: seconds (after it is due) an id enqueued by this process keeps counting
            as pending unless a worker of this process settles it first; see the docs page on
            what is per process.
        shared_state: a `RedisSharedState` through which every process shares unique ids,
            cancellations, per-actor limits and the worker registry (`capabilities.shared_state`
            becomes True). This broker connects and disconnects it. Without it, those are kept
            per process.
        fast_path: read frames, hand deliveries over and batch publishes below aiormq's public
            API, on this broker's own connection only (see the docs page, "Internals").
            Default: on, unless the environment has `REPID_FAST_PATH=0` when the broker is
            built. `False` keeps every call on aio-pika's and aiormq's public path.
        queue_type: `"classic"` (the default) or `"quorum"`: replicated quorum queues, one
            per priority (quorum queues have no priorities in RabbitMQ 3.x), consumed highest
            first; see the docs page, "Quorum queues".
        delivery_limit: quorum queues only: RabbitMQ dead-letters a message delivered this
            many times without being settled (a worker crashing on it each time); `None`
            turns the backstop off. repid's own retries publish a new message and do not count.
    """

    def __init__(
        self,
        dsn: str | Sequence[str] = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        prefix: str = "",
        fast_queues: Collection[str] = (),
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
        timeout: float | None = None,
        reconnect_interval: float | None = None,
        max_message_size: int = 16 * 1024 * 1024,
        unique_window: float = 600.0,
        shared_state: RedisSharedState | None = None,
        fast_path: bool | None = None,
        queue_type: str = "classic",
        delivery_limit: int | None = 20,
    ) -> None:
        self.dsn = dsn if isinstance(dsn, str) else ",".join(dsn)
        split_nodes(self.dsn)  # an empty address list fails here, not at connect()
        self.prefix = prefix
        self.fast_queues = frozenset(fast_queues)
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout,
            operation_timeout,
            reconnect_backoff,
            defaults=_DEFAULT_POLICY,
            timeout=timeout,
            reconnect_interval=reconnect_interval,
        )
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
            liveness=True,
            event_bus=True,
        )
        self._link = AmqpLink(
            self.dsn,
            self.connection_policy,
            fast_path=_compat.fast_path_default() if fast_path is None else fast_path,
        )
        self._topology = Topology(
            self._admin,
            prefix,
            HOLD_LOCALLY,
            queue_type=queue_type,
            delivery_limit=delivery_limit,
        )
        self.queue_type = queue_type
        self.delivery_limit = delivery_limit
        self._msg_ids = itertools.count()
        self._control = Control(self, prefix)
        ProcessState.__init__(self, shared_state)
        # A message delivered while the enqueue/requeue that sent it is still returning is
        # handed out only once that call has returned (`enqueued`/`retried` come before `started`).
        self._requeuing: dict[tuple[str, str], list[tuple[RabbitConsumer, Delivery]]] = {}
        self._returns: dict[ChannelState, list[int]] = {}
        self._subscribers: weakref.WeakSet[RabbitConsumer] = weakref.WeakSet()
        self._flushes: set[asyncio.Task[None]] = set()
        self._props: dict[tuple[bool, int], dict[str, Any]] = {
            (persistent, priority): {
                "delivery_mode": 2 if persistent else 1,
                "priority": _amqp_priority(priority),
                "content_type": "application/json",
            }
            for persistent in (True, False)
            for priority in range(MAX_PRIORITY + 1)
        }

    def __repr__(self) -> str:
        dsn = masked(split_nodes(self.dsn))
        if self.queue_type == "classic":
            return f"RabbitMessageBroker({dsn!r}, prefix={self.prefix!r})"
        return (
            f"RabbitMessageBroker({dsn!r}, prefix={self.prefix!r}, queue_type={self.queue_type!r})"
        )

    @property
    def fast_path(self) -> bool:
        """Whether this broker uses its fast paths (asked for, and the tested aiormq/pamqp)."""
        return self._link.fast_path

    @property
    def dead_letter_exchange(self) -> str:
        """The exchange through which every queue of this broker dead-letters."""
        return self._topology.dead_letter_exchange

    @property
    def timeout(self) -> float:
        """The older name of `connection_policy.operation_timeout`."""
        return self.connection_policy.operation_timeout

    @property
    def reconnect_interval(self) -> float:
        """The older name of `connection_policy.reconnect_backoff`."""
        return self.connection_policy.reconnect_backoff

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._link.connect()
        if self._state is not None:
            await self._state.connect()

    async def ping(self) -> bool:
        """The connection is up now (aio-pika's `connected`, cleared while it reconnects)."""
        connection = self._link.connection
        return connection is not None and connection.connected.is_set()

    async def disconnect(self) -> None:
        await self._control.close()
        await self._link.close()
        if self._state is not None:
            await self._state.disconnect()

    async def _new_channel(self, *, confirms: bool) -> aiormq.abc.AbstractChannel:
        """A fresh AMQP channel on the current connection (waits for a reconnection)."""
        return await self._link.new_channel(confirms=confirms)

    async def _admin(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        return await self._link.admin(operation, *args, **kwargs)

    async def listen_for_cancels(self) -> None:
        """Receive the cancel requests of other processes (a worker's consumer calls it)."""
        await self._control.listen()

    def register_inline(
        self, consumer_tag: str, channel: Any, on_message: Callable[[DeliveredMessage], None]
    ) -> None:
        """Let the frame reader hand this consumer's deliveries over whole."""
        self._link.register_inline(consumer_tag, channel, on_message)

    def unregister_inline(self, consumer_tag: str) -> None:
        self._link.unregister_inline(consumer_tag)

    # -- names and queues ---------------------------------------------------------------------

    def _name(self, queue: str) -> str:
        return self.prefix + queue

    def _sources(self, queue: str) -> list[str]:
        """The server queues a worker consumes for `queue`, highest priority first."""
        return self._topology.sources(queue)

    async def queue_declare(self, queue_name: str) -> None:
        await self._topology.declare(queue_name)
        for consumer in self._consumers_of(queue_name):
            consumer.queue_declared()

    def _consumers_of(self, queue_name: str) -> list[RabbitConsumer]:
        return [c for c in self._subscribers if c.queue == queue_name]

    async def _check_queue(self, queue_name: str) -> None:
        """Raise `QueueNotDeclaredError` unless the queue exists on the server."""
        await self._topology.check(queue_name)

    async def _purge_or_delete(self, queue_name: str, *, delete: bool) -> None:
        await self._topology.purge_or_delete(queue_name, delete=delete)
        if delete:
            for consumer in self._consumers_of(queue_name):
                consumer.queue_deleted()
        self._pending.pop(queue_name, None)
        if self._state is not None:
            await self._state.forget_queue(queue_name)
        for slot in [slot for slot in self._tombstones if slot[0] == queue_name]:
            del self._tombstones[slot]

    async def queue_flush(self, queue_name: str) -> None:
        await self._purge_or_delete(queue_name, delete=False)

    async def queue_delete(self, queue_name: str) -> None:
        await self._purge_or_delete(queue_name, delete=True)

    def queue_names(self) -> list[str]:
        """The queues declared through this broker object (RabbitMQ lists no others to AMQP)."""
        return sorted(self._topology.declared)

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Messages per part of the queue: ready, delayed, in_flight (in this process), dead.

        AMQP does not report unacknowledged messages, so `in_flight` counts the deliveries held
        by consumers of this process only.
        """
        ready, delayed, dead = await self._topology.counts(queue_name)
        in_flight = sum(n for (q, _), n in self._in_flight.items() if q == queue_name)
        return {"ready": ready, "delayed": delayed, "in_flight": in_flight, "dead": dead}

    async def _delay_queues(self, queue_name: str) -> list[str]:
        """The delay queues of `queue_name` that exist on the server, shortest delay first."""
        return await self._topology.delay_queues(queue_name)

    # -- publishing ------------------------------------------------------------------------

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
        topology = self._topology
        if routing_key is None:
            routing_key, level = topology.route(queue_name, params, key.priority)
            if level is not None and (queue_name, level) not in topology.delay_declared:
                await topology.declare_delay(queue_name, level)
        fast = queue_name in self.fast_queues
        values = dict(self._props[(not fast, key.priority)])
        values["message_id"] = str(next(self._msg_ids))
        if headers:
            values["headers"] = headers
        properties = spec.Basic.Properties(**values)
        kind = "fast" if fast else "confirm"

        async def attempt() -> None:
            nonlocal level
            while True:
                try:
                    await self._link.publish_once(
                        kind, exchange, routing_key, body, properties, mandatory=not fast
                    )
                    return
                except aiormq.exceptions.PublishError:
                    if level is None:
                        raise QueueNotDeclaredError(queue_name) from None
                    # The delay queue vanished (flushed elsewhere): declare it again.
                    topology.delay_declared.discard((queue_name, level))
                    await topology.declare_delay(queue_name, level)
                    level = None

        await self._link.retrying(f"publishing to {queue_name!r}", attempt, log=True)

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
                again = to_delivery(
                    message,
                    state,
                    key.key.queue,
                    key.category,
                    handle.source,
                    self.max_message_size,
                )
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
            await await_quietly(channel.close(), *CHANNEL_ERRORS)  # the others: back to the queue

    async def ack(self, key: Delivery) -> bool:
        handle: Handle = key.handle
        if key.category is MessageCategory.NORMAL:
            self._settled(key)
            self._job_over(key.key.id_)
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
        self._job_over(key.key.id_)
        return await self._nack(key, key.handle, parameters)

    async def _nack(self, key: Delivery, handle: Handle, parameters: Parameters | None) -> bool:
        if not handle.state.alive:
            logger.warning("stale nack of message %s ignored", key.key.id_)
            return False
        params = key.parameters if parameters is None else parameters
        dead = self._name(key.key.queue) + ":dead"
        exchange = self._topology.dead_letter_exchange
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
            exchange=exchange,
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
        if self.queue_type == "quorum":
            self._return_in_order(handle)
            return True
        return await handle.state.settle_now(handle.tag, requeue=True)

    def _return_in_order(self, handle: Handle) -> None:
        """Quorum queues put returned messages back in the order they are returned (classic
        queues: at their old place). Returns of one event-loop step are sent oldest first, so a
        batch given back newest first (as `Queue.get_messages` does) keeps the queue's order."""
        state = handle.state
        pending = self._returns.get(state)
        if pending is None:
            pending = self._returns[state] = []

            async def flush() -> None:
                # A task's first step runs after the current one: the other returns are in.
                tags = sorted(self._returns.pop(state, ()))
                for tag in tags:
                    if tag in state.unsettled:
                        await state.settle_now(tag, requeue=True)

            task = asyncio.ensure_future(flush())
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)
        pending.append(handle.tag)

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
