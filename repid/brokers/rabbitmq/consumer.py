"""RabbitMQ consumers: the worker's subscription of a queue, and browsers of its dead and
delayed parts. Each consumer owns one AMQP channel (prefetch = the worker's concurrency).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from repid.brokers.base import BaseConsumer, Delivery
from repid.brokers.rabbitmq._frames import deliver_inline
from repid.brokers.rabbitmq.channel_state import (
    CHANNEL_ERRORS,
    Bands,
    ChannelState,
    Handle,
    to_delivery,
)
from repid.data import MessageCategory
from repid.errors import (
    BrokerUnavailableError,
    ConsumerClosedError,
    ErrorMap,
    map_broker_errors,
)

# ChannelState and deliver_inline are re-exported: they lived here first (tests import them here).
_CONNECTION_ERRORS: ErrorMap = {aiormq.exceptions.AMQPConnectionError: BrokerUnavailableError}
"""Connection failures while a consumer opens: the worker retries those at start-up."""

__all__ = ["HOLD_LOCALLY", "ChannelState", "ConsumerHost", "RabbitConsumer", "deliver_inline"]

logger = logging.getLogger("repid.brokers.rabbitmq")

HOLD_LOCALLY = 0.064
"""A message due within this many seconds is held by the consumer instead of re-delayed."""


class ConsumerHost(Protocol):
    """What a consumer uses of its broker (`RabbitMessageBroker` is one)."""

    @property
    def fast_path(self) -> bool: ...

    @property
    def max_message_size(self) -> int: ...

    @property
    def _tombstones(self) -> Mapping[tuple[str, str], float]: ...

    @property
    def _requeuing(self) -> dict[tuple[str, str], list[tuple[RabbitConsumer, Delivery]]]: ...

    def _name(self, queue: str) -> str: ...

    def _sources(self, queue: str) -> list[str]: ...

    async def _check_queue(self, queue_name: str) -> None: ...

    async def _new_channel(self, *, confirms: bool) -> aiormq.abc.AbstractChannel: ...

    @property
    def _subscribers(self) -> weakref.WeakSet[RabbitConsumer]: ...

    async def listen_for_cancels(self) -> None: ...

    def register_inline(
        self, consumer_tag: str, channel: Any, on_message: Callable[[DeliveredMessage], None]
    ) -> None: ...

    def unregister_inline(self, consumer_tag: str) -> None: ...

    def _release_state(self, state: ChannelState) -> None: ...

    def _is_tombstoned(self, delivery: Delivery) -> bool: ...

    async def _delay_again(self, delivery: Delivery) -> None: ...

    def _track(self, delivery: Delivery) -> None: ...

    async def _delay_queues(self, queue_name: str) -> list[str]: ...


class RabbitConsumer(BaseConsumer):
    """Hands out the deliveries of one queue (NORMAL) to a worker, or browses a part of it."""

    def __init__(
        self,
        broker: ConsumerHost,
        queue: str,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> None:
        self._broker = broker
        self._queue = queue
        self._topics = frozenset(topics) if topics is not None else None
        self.max_unacked_messages = max_unacked_messages
        self._category = category
        self._sources = broker._sources(queue)
        self._ready: deque[Delivery] | Bands = deque() if len(self._sources) == 1 else Bands()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._state: ChannelState | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False
        self._paused = False
        self._subscribed = False
        self._resubscribe = asyncio.Event()
        self._queue_gone = False
        self._get_lock = asyncio.Lock()
        self._pull_lock = asyncio.Lock()
        self._empty_at = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        connection_errors: ErrorMap = {
            aiormq.exceptions.AMQPConnectionError: BrokerUnavailableError
        }
        with map_broker_errors(connection_errors, f"opening a consumer of {self._queue!r}"):
            await self._broker._check_queue(self._queue)
            self._closed = False
            self._state = await self._open_state()

    async def _open_state(self) -> ChannelState:
        channel = await self._broker._new_channel(confirms=False)
        if self.max_unacked_messages:
            await channel.basic_qos(prefetch_count=self.max_unacked_messages)
        return ChannelState(channel, self.max_unacked_messages)

    async def pause(self) -> None:
        self._paused = True

    async def unpause(self) -> None:
        self._paused = False
        self._wake_all()

    async def finish(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._broker._subscribers.discard(self)
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
        for timer in self._timers:
            timer.cancel()
        if self._background:
            # Let re-delays finish: cut short, a message could end up both re-delayed and back.
            await asyncio.wait(set(self._background), timeout=5.0)
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        self._wake_all()
        async with self._pull_lock:  # no basic.get left on the channel
            if self._state is not None:
                await self._close_state(self._state)
        self._ready.clear()

    async def _close_state(self, state: ChannelState) -> None:
        await state.drain()
        if len(self._sources) > 1 and state.alive:
            # A quorum queue puts back what a closed channel held in no particular order:
            # return them one by one, in the order they came, so the queue keeps its order.
            for tag in sorted(state.unsettled):
                await state.settle_now(tag, requeue=True)
        # Unsettled deliveries go back to the queue when the channel closes.
        self._broker._release_state(state)
        try:
            await state.channel.close()
        except CHANNEL_ERRORS:
            pass
        except asyncio.CancelledError:
            # aiormq ends a close on a dead connection with CancelledError: swallow that one,
            # never a cancellation of this task (its caller would run on, e.g. a wait_for
            # around a browsing iterator would wait forever).
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise

    def _wake_all(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)

    def _wake_one(self) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    # -- the subscription (NORMAL) ------------------------------------------------------------

    @property
    def queue(self) -> str:
        """The name of the queue (as the application calls it)."""
        return self._queue

    def queue_deleted(self) -> None:
        """This process deleted the queue: subscribe again once it is declared again."""
        self._queue_gone = True

    def queue_declared(self) -> None:
        """This process declared the queue. If it had deleted it, the subscription starts over
        on a new channel: RabbitMQ (3.10) does not cancel the consumers of a quorum queue that
        is deleted and at once declared again, and the new queue then hands messages to those
        stale consumers, which never receive them."""
        if self._queue_gone:
            self._queue_gone = False
            self._resubscribe.set()

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
            self._broker._subscribers.add(self)
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"repid-rabbitmq-consumer-{self._queue}"
            )

    async def _supervise(self) -> None:
        """Keep a consumer subscribed: re-open the channel / re-consume after any loss."""
        backoff = 0.1
        while not self._closed:
            state = self._state
            try:
                if state is None or not state.alive or state.channel.is_closed:
                    if state is not None:
                        self._broker._release_state(state)
                    self._state = state = None
                    self._ready.clear()  # their channel is gone: RabbitMQ redelivers them
                    state = await self._open_state()
                    self._state = state
                self._resubscribe.clear()
                channel = state.channel
                cancelled = asyncio.get_running_loop().create_future()

                def on_cancel(frame: Any, fut: asyncio.Future[None] = cancelled) -> None:
                    if not fut.done():
                        fut.set_result(None)

                channel.on_consumer_cancel_callbacks.add(on_cancel)
                tags: list[str] = []
                try:
                    try:  # before any job can start here: cancel requests of other processes
                        await self._broker.listen_for_cancels()
                    except Exception as exc:
                        logger.warning("listening for cancel requests failed: %r", exc)
                    for band, source in enumerate(self._sources):  # quorum: HIGH first
                        on_message = self._on_message_for(state, band)
                        tag = f"repid.{channel.number}.{os.urandom(8).hex()}"
                        tags.append(tag)
                        if self._broker.fast_path:
                            # Registered before the subscription: no delivery of it ever takes
                            # aiormq's per-frame path (see `_frames.FrameReader`).
                            self._broker.register_inline(tag, channel, on_message)
                            deliver_inline(channel, tag, on_message)
                        await channel.basic_consume(
                            source, on_message, no_ack=False, consumer_tag=tag
                        )
                    backoff = 0.1
                    redeclared = asyncio.ensure_future(self._resubscribe.wait())
                    try:
                        await asyncio.wait(
                            {cancelled, channel.closing, redeclared},
                            return_when=asyncio.FIRST_COMPLETED,
                        )
                    finally:
                        redeclared.cancel()
                finally:
                    channel.on_consumer_cancel_callbacks.discard(on_cancel)
                    for tag in tags:
                        self._broker.unregister_inline(tag)
                    redone = self._resubscribe.is_set()
                    if not redone and len(tags) > 1 and cancelled.done() and not channel.is_closed:
                        # One of several was cancelled: end the others before subscribing again.
                        for tag in tags:
                            with contextlib.suppress(*CHANNEL_ERRORS):
                                await channel.basic_cancel(tag)
                if redone:
                    # The old consumers stay attached to the new queue on this channel, and what
                    # the channel holds was in the deleted queue: a new channel, nothing returned.
                    logger.info("queue %r was declared again; subscribing again", self._queue)
                    state.alive = False
                    self._state = None
                    await self._close_state(state)
                elif cancelled.done() and not channel.is_closed:
                    logger.warning(
                        "RabbitMQ cancelled the consumer of %r; subscribing again", self._queue
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                else:
                    logger.warning("channel of the consumer of %r closed; reopening", self._queue)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "consuming %r failed (%r); retrying in %.1fs", self._queue, exc, backoff
                )
                if state is not None and state.channel.is_closed:
                    self._broker._release_state(state)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _band(self, index: int) -> int | None:
        """The priority of the messages of source `index` (None: one queue for all)."""
        return index if len(self._sources) > 1 else None

    def _on_message_for(self, state: ChannelState, index: int = 0) -> Any:
        queue = self._queue
        ready = self._ready
        max_size = self._broker.max_message_size
        band = self._band(index)

        def on_message(message: DeliveredMessage) -> None:
            tag: int = message.delivery.delivery_tag  # type: ignore[union-attr, assignment]
            state.unsettled.add(tag)
            delivery = to_delivery(message, state, queue, max_size=max_size)
            if self._admit(delivery, band):
                ready.append(delivery)
                self._wake_one()

        return on_message

    def _admit(self, delivery: Delivery, band: int | None = None) -> bool:
        """False if the delivery is not for a worker now: cancelled, early, or (quorum queues)
        in the queue of another priority: a delayed message comes back through the MEDIUM
        queue, and is sent on to the queue of its priority."""
        broker = self._broker
        handle: Handle = delivery.handle
        if broker._tombstones and broker._is_tombstoned(delivery):
            self._spawn(handle.state.ack(handle.tag))
            return False
        not_before = delivery.parameters.not_before
        if not_before is not None:
            remaining = not_before - time.time()
            if remaining > HOLD_LOCALLY:
                self._spawn(broker._delay_again(delivery))
                return False
            if remaining > 0:
                timer = asyncio.get_running_loop().call_later(
                    remaining, self._release_held, delivery
                )
                self._timers.add(timer)
                return False
        if band is not None and delivery.raw is None and delivery.key.priority != band:
            self._spawn(broker._delay_again(delivery))
            return False
        return True

    def _release_held(self, delivery: Delivery) -> None:
        self._timers = {t for t in self._timers if not t.cancelled() and t.when() > 0}
        if not self._closed and delivery.handle.state.alive:
            self._ready.append(delivery)
            self._wake_one()

    def _unpark(self, delivery: Delivery) -> None:
        if not self._closed:
            self._ready.appendleft(delivery)
            self._wake_one()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- handing out ----------------------------------------------------------------------------

    def _take(self) -> Delivery | None:
        ready = self._ready
        topics = self._topics
        while ready:
            delivery = ready.popleft()
            if not delivery.handle.state.alive:
                continue  # its channel died: RabbitMQ delivers it again
            tombstones = self._broker._tombstones  # cancelled while it waited here?
            if tombstones and self._broker._is_tombstoned(delivery):
                self._spawn(delivery.handle.state.ack(delivery.handle.tag))
                continue
            if topics is not None and delivery.key.topic not in topics:
                self._spawn(delivery.handle.state.settle_now(delivery.handle.tag, requeue=True))
                continue
            requeuing = self._broker._requeuing
            if requeuing:
                parked = requeuing.get((delivery.key.queue, delivery.key.id_))
                if parked is not None:
                    parked.append((self, delivery))
                    continue
            self._broker._track(delivery)
            return delivery
        return None

    async def consume(self) -> Delivery:
        if self._category is not MessageCategory.NORMAL:
            batch = await self.fetch(1)
            if not batch:
                raise ConsumerClosedError("no more messages in this part of the queue")
            return batch[0]
        self._subscribe()
        while True:
            if self._closed:
                raise ConsumerClosedError(f"consumer of {self._queue!r} has finished")
            if not self._paused:
                if type(self._ready) is Bands:
                    await self._pull_higher(self._ready)
                delivery = self._take()
                if delivery is not None:
                    return delivery
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(fut)
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():
                    self._wake_one()  # pass on a wake-up we swallowed
                raise

    async def fetch(self, max_count: int, timeout: float = 0.0) -> list[Delivery]:
        if self._category is not MessageCategory.NORMAL:
            return await self._browse(max_count)
        out: list[Delivery] = []
        while len(out) < max_count:
            if type(self._ready) is Bands:
                await self._pull_higher(self._ready)
            delivery = self._take()
            if delivery is None:
                break
            out.append(delivery)
        if out or self._subscribed:
            if not out and timeout > 0:
                with contextlib.suppress(TimeoutError):
                    out.append(await asyncio.wait_for(self.consume(), timeout))
            return out
        deadline = time.monotonic() + timeout
        while len(out) < max_count:
            empty, got = await self._get_one()
            if empty:
                if out or time.monotonic() >= deadline:
                    break
                await asyncio.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
                continue
            if got is not None:
                out.append(got)
        return out

    async def _pull_higher(self, ready: Bands) -> None:
        """Quorum queues: before a MEDIUM or LOW delivery is handed out, take a ready message
        of a higher priority from its queue if there is one (its consumer may not have got it
        yet: its prefetch was full). One lane at a time."""
        best = ready.best()
        if not best:
            return
        async with self._pull_lock:
            best = ready.best()
            if not best or self._closed:
                return
            # On the subscription's own channel: a message pushed to it before the reply is
            # already in `ready` when the reply arrives (one channel's frames are ordered).
            state = self._state
            if state is None or not state.alive or state.channel.is_closed:
                return
            try:
                for band in range(best):
                    message = await state.channel.basic_get(self._sources[band], no_ack=False)
                    if isinstance(message.delivery, spec.Basic.GetOk):
                        delivery = to_delivery(message, state, self._queue)
                        state.unsettled.add(delivery.handle.tag)
                        if self._admit(delivery, band):
                            ready.appendleft(delivery)
                        return
            except CHANNEL_ERRORS as exc:
                logger.debug("taking a higher priority message failed: %r", exc)

    async def _get_one(self) -> tuple[bool, Delivery | None]:
        """basic.get one message (of the highest priority queue that has one, for quorum
        queues): (queues were empty, the delivery unless it was not admitted)."""
        asked = time.monotonic()
        async with self._get_lock:
            if self._empty_at >= asked:
                return True, None  # another lane found them empty meanwhile: no more round trips
            state = self._state
            if state is None or not state.alive:
                raise ConsumerClosedError(f"consumer of {self._queue!r} has finished")
            found = None
            for index, source in enumerate(self._sources):
                message = await state.channel.basic_get(source, no_ack=False)
                if isinstance(message.delivery, spec.Basic.GetOk):
                    found = index
                    break
            if found is None:
                self._empty_at = time.monotonic()
                return True, None
        index = found
        delivery = to_delivery(message, state, self._queue, max_size=self._broker.max_message_size)
        state.unsettled.add(delivery.handle.tag)
        if not self._admit(delivery, self._band(index)):
            return False, None
        if self._topics is not None and delivery.key.topic not in self._topics:
            await state.settle_now(delivery.handle.tag, requeue=True)
            return False, None
        self._broker._track(delivery)
        return False, delivery

    # -- browsing DEAD and DELAYED parts --------------------------------------------------------

    async def _browse(self, max_count: int) -> list[Delivery]:
        state = self._state
        if state is None or not state.alive:
            return []
        broker = self._broker
        if self._category is MessageCategory.DEAD:
            sources = [broker._name(self._queue) + ":dead"]
        else:
            sources = await broker._delay_queues(self._queue)
        out: list[Delivery] = []
        for source in sources:
            while len(out) < max_count:
                try:
                    message = await state.channel.basic_get(source, no_ack=False)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    # A delay queue vanished (flushed): what we held went back; start over.
                    state.alive = False
                    self._state = state = await self._open_state()
                    break
                if not isinstance(message.delivery, spec.Basic.GetOk):
                    break
                delivery = to_delivery(
                    message,
                    state,
                    self._queue,
                    self._category,
                    source,
                    self._broker.max_message_size,
                )
                if broker._tombstones and broker._is_tombstoned(delivery):
                    await state.channel.basic_ack(delivery.handle.tag)
                    continue
                if self._topics is not None and delivery.key.topic not in self._topics:
                    continue
                out.append(delivery)
        return out
