"""RabbitMQ consumers: the worker's subscription, and the browsers of the dead and delayed parts.

Each consumer owns one AMQP channel (prefetch = the worker's concurrency). Acknowledgements of
one event-loop tick are coalesced, with `multiple=True` when every earlier delivery tag of the
channel is settled. A channel or consumer lost to a reconnection or a server-side cancel is
re-established by a supervisor task; settlements of deliveries from a dead channel are stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

import aiormq
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from repid.brokers.base import Delivery
from repid.brokers.rabbitmq import _frames as _rabbitmq_frames
from repid.codec import decode_message
from repid.data import DeadLetterInfo, MessageCategory, Parameters, RoutingKey
from repid.errors import ConsumerClosedError, DecodeError

if TYPE_CHECKING:
    from repid.brokers.rabbitmq.broker import RabbitMessageBroker

logger = logging.getLogger("repid.brokers.rabbitmq")

_rabbitmq_frames.install()  # whole buffered frames are read without awaiting (see the module)

HOLD_LOCALLY = 0.064
"""A message due within this many seconds is held by the consumer instead of re-delayed."""
DEAD_INFO_HEADER = "x-repid-dead-letter"
"""Dead-letter details of a message whose body is not a repid envelope (kept as raw bytes)."""
ACK_WINDOW = 0.003
"""Seconds acks wait for others to share their frame (at 10k+/s: tens of acks per frame)."""
ACK_BATCH_SHARE = 4
"""Pending acks leave at once when they reach 1/4 of the prefetch: RabbitMQ never stops
delivering for want of acks that are only waiting for the window (each flush is a socket write,
which on loopback also costs the wake-up of the server)."""
_ACK_BATCH_UNLIMITED = 64
"""The same threshold when the channel has no prefetch limit."""
CHANNEL_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError)


def _stale(how: str, tag: int) -> None:
    logger.warning(
        "stale %s of delivery tag %d ignored: its channel closed, RabbitMQ delivers the "
        "message again",
        how,
        tag,
    )


class ChannelState:
    """One incarnation of a consumer's channel: its unsettled tags and its pending acks."""

    __slots__ = (
        "alive",
        "channel",
        "flush_at",
        "flush_timer",
        "flushes",
        "flushing",
        "in_flight",
        "to_ack",
        "unsettled",
    )

    def __init__(self, channel: aiormq.abc.AbstractChannel, prefetch: int | None = None) -> None:
        self.channel = channel
        self.alive = True
        self.flush_at = max(1, prefetch // ACK_BATCH_SHARE) if prefetch else _ACK_BATCH_UNLIMITED
        """Pending acks that leave at once, without waiting for the window."""
        self.unsettled: set[int] = set()
        """Delivered and not settled yet (held by a lane or waiting in the consumer)."""
        self.to_ack: list[int] = []
        self.flush_timer: asyncio.TimerHandle | None = None
        self.flushes: set[asyncio.Task[None]] = set()
        self.flushing = False
        self.in_flight: dict[int, tuple[str, str]] = {}
        """Handed out by the consumer, by tag: (queue, job id)."""

    async def ack(self, tag: int) -> bool:
        """Acknowledge `tag` with the other acks of the next `ACK_WINDOW` seconds (one frame).

        Returns at once; `drain()` sends what is pending (the consumer calls it on finish).
        With nothing else in flight the ack leaves on the next loop iteration; `flush_at`
        pending acks leave at once.
        """
        if not self.alive:
            _stale("ack", tag)
            return False
        self.unsettled.discard(tag)
        self.to_ack.append(tag)
        if len(self.to_ack) >= self.flush_at:
            if self.flush_timer is not None:
                self.flush_timer.cancel()
            self._start_flush()
        elif self.flush_timer is None:
            loop = asyncio.get_running_loop()
            delay = ACK_WINDOW if self.unsettled else 0.0
            self.flush_timer = loop.call_later(delay, self._start_flush)
        return True

    def _start_flush(self) -> None:
        self.flush_timer = None
        if self.flushing:
            return  # the running flush sends what is pending when its current batch is out
        self.flushing = True
        task = asyncio.ensure_future(self._flush())
        self.flushes.add(task)
        task.add_done_callback(self.flushes.discard)

    async def _flush(self) -> None:
        # One flush at a time, so a `multiple` ack never overtakes an earlier batch's acks.
        try:
            await self._send_acks()
        finally:
            self.flushing = False

    async def _send_acks(self) -> None:
        while self.to_ack and self.alive:
            tags, self.to_ack = self.to_ack, []
            lowest = min(self.unsettled) if self.unsettled else None
            below = [t for t in tags if lowest is None or t < lowest]
            try:
                if below:
                    # Every tag up to max(below) is settled or in `below`: one frame acks them.
                    await self.channel.basic_ack(max(below), multiple=len(below) > 1, wait=False)
                for t in tags:
                    if lowest is not None and t > lowest:
                        await self.channel.basic_ack(t, wait=False)
            except CHANNEL_ERRORS as exc:
                self.alive = False
                logger.warning(
                    "ack on a closed channel (%r); RabbitMQ will deliver those messages again", exc
                )

    async def drain(self) -> None:
        """Send the pending acks now (before the channel closes)."""
        if self.flush_timer is not None:
            self.flush_timer.cancel()
        if self.to_ack:
            self._start_flush()
        if self.flushes:
            await asyncio.gather(*self.flushes, return_exceptions=True)

    async def settle_now(self, tag: int, *, requeue: bool) -> bool:
        """Reject one delivery at once: back to its queue (`requeue`) or dropped."""
        if not self.alive:
            _stale("reject", tag)
            return False
        self.unsettled.discard(tag)
        try:
            await self.channel.basic_nack(tag, requeue=requeue, wait=False)
        except CHANNEL_ERRORS as exc:
            self.alive = False
            logger.warning(
                "reject on a closed channel (%r); RabbitMQ will deliver the message again", exc
            )
            return False
        return True


class Handle:
    """The broker-owned part of a delivery: the channel incarnation and the delivery tag."""

    __slots__ = ("source", "state", "tag")

    def __init__(self, state: ChannelState, tag: int, source: str | None = None) -> None:
        self.state = state
        self.tag = tag
        self.source = source
        """The RabbitMQ queue a browsed (dead or delayed) message was read from."""

    def __repr__(self) -> str:
        return f"Handle(tag={self.tag}, alive={self.state.alive})"


def to_delivery(
    message: DeliveredMessage,
    state: ChannelState,
    queue: str,
    category: MessageCategory = MessageCategory.NORMAL,
    source: str | None = None,
) -> Delivery:
    """Decode one AMQP message into a delivery (an undecodable one keeps its raw bytes)."""
    tag: int = message.delivery.delivery_tag  # type: ignore[union-attr, assignment]
    redelivered = bool(message.delivery.redelivered)  # type: ignore[union-attr]
    body = message.body
    handle = Handle(state, tag, source)
    try:
        key, payload, params = decode_message(body)
    except DecodeError as exc:
        props = message.header.properties
        priority = 2 - (props.priority or 0) if props.priority is not None else 1
        params = Parameters()
        headers = props.headers or {}
        info = headers.get(DEAD_INFO_HEADER)
        if isinstance(info, (bytes, str)):
            from pydantic_core import from_json

            with contextlib.suppress(ValueError, KeyError, TypeError):
                params = params._replace(dead_letter=DeadLetterInfo.decode(from_json(info)))
        return Delivery(
            RoutingKey(f"raw-{tag}", "", queue, min(max(priority, 0), 2)),
            "",
            params,
            handle,
            category,
            body,
            str(exc),
            redelivered,
        )
    return tuple.__new__(
        Delivery, (key, payload, params, handle, category, None, None, redelivered)
    )


def _deliver_inline(channel: Any, consumer_tag: str | None, on_message: Any) -> None:
    """Run `on_message` right in the channel's reader instead of in a task per message.

    aiormq starts a task for each delivery; our callback is synchronous (it only queues the
    delivery), so calling it inline saves that task. Only when the channel has the reader
    hooks this relies on; otherwise aiormq's own path stays.
    """
    original = getattr(channel, "_on_deliver_frame", None)
    get_frame = getattr(channel, "_get_frame", None)
    frames: asyncio.Queue[tuple[int, Any]] | None = getattr(channel, "frames", None)
    if original is None or get_frame is None or frames is None or consumer_tag is None:
        return

    async def on_deliver_frame(frame: spec.Basic.Deliver) -> None:
        if frame.consumer_tag != consumer_tag:
            await original(frame)
            return
        # The content frames usually arrived with the deliver frame: take them without awaiting
        # (what the channel's `_get_frame` does when its queue is not empty).
        assembly = _rabbitmq_frames.Assembly(frame, channel, on_message)
        while True:
            if frames.empty():
                content = await get_frame()
            else:
                content = frames.get_nowait()[1]
                frames.task_done()
            if assembly.add(content):
                return

    channel._on_deliver_frame = on_deliver_frame


class RabbitConsumer:
    """Hands out the deliveries of one queue (NORMAL) to a worker, or browses a part of it."""

    def __init__(
        self,
        broker: RabbitMessageBroker,
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
        self._ready: deque[Delivery] = deque()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._state: ChannelState | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._timers: set[asyncio.TimerHandle] = set()
        self._closed = False
        self._paused = False
        self._subscribed = False
        self._resubscribe = asyncio.Event()

    # -- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
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
        state = self._state
        if state is not None:
            await state.drain()
            # Unsettled deliveries go back to the queue when the channel closes.
            self._broker._release_state(state)
            with contextlib.suppress(*CHANNEL_ERRORS, asyncio.CancelledError):
                await state.channel.close()
        self._ready.clear()

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

    def _subscribe(self) -> None:
        if not self._subscribed:
            self._subscribed = True
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
                tag: str | None = None
                try:
                    try:  # before any job can start here: cancel requests of other processes
                        await self._broker._control.listen()
                    except Exception as exc:
                        logger.warning("listening for cancel requests failed: %r", exc)
                    on_message = self._on_message_for(state)
                    # Registered before the subscription: no delivery of it ever takes
                    # aiormq's per-frame path (see `_rabbitmq_frames`).
                    tag = f"repid.{channel.number}.{os.urandom(8).hex()}"
                    _rabbitmq_frames.register(tag, channel, on_message)
                    _deliver_inline(channel, tag, on_message)
                    await channel.basic_consume(
                        self._broker._name(self._queue), on_message, no_ack=False, consumer_tag=tag
                    )
                    backoff = 0.1
                    await asyncio.wait(
                        {cancelled, channel.closing}, return_when=asyncio.FIRST_COMPLETED
                    )
                finally:
                    channel.on_consumer_cancel_callbacks.discard(on_cancel)
                    if tag is not None:
                        _rabbitmq_frames.unregister(tag)
                if cancelled.done() and not channel.is_closed:
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

    def _on_message_for(self, state: ChannelState) -> Any:
        queue = self._queue
        ready = self._ready

        def on_message(message: DeliveredMessage) -> None:
            tag: int = message.delivery.delivery_tag  # type: ignore[union-attr, assignment]
            state.unsettled.add(tag)
            delivery = to_delivery(message, state, queue)
            if self._admit(delivery):
                ready.append(delivery)
                self._wake_one()

        return on_message

    def _admit(self, delivery: Delivery) -> bool:
        """False if the delivery is not for a worker now: cancelled, early, or another topic."""
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

    async def _get_one(self) -> tuple[bool, Delivery | None]:
        """basic.get one message: (queue was empty, the delivery unless it was not admitted)."""
        state = self._state
        if state is None or not state.alive:
            raise ConsumerClosedError(f"consumer of {self._queue!r} has finished")
        message = await state.channel.basic_get(self._broker._name(self._queue), no_ack=False)
        if not isinstance(message.delivery, spec.Basic.GetOk):
            return True, None
        delivery = to_delivery(message, state, self._queue)
        state.unsettled.add(delivery.handle.tag)
        if not self._admit(delivery):
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
                delivery = to_delivery(message, state, self._queue, self._category, source)
                if broker._tombstones and broker._is_tombstoned(delivery):
                    await state.channel.basic_ack(delivery.handle.tag)
                    continue
                if self._topics is not None and delivery.key.topic not in self._topics:
                    continue
                out.append(delivery)
        return out

    # -- iteration -------------------------------------------------------------------------------

    async def __aenter__(self) -> RabbitConsumer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.finish()

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Delivery]:
        while True:
            try:
                yield await self.consume()
            except ConsumerClosedError:
                return
