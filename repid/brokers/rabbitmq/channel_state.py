"""One consumer channel's incarnation: its unsettled delivery tags and coalesced acks, the
broker-owned handle of a delivery, and the decoding of an AMQP message into a `Delivery`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

import aiormq
from aiormq.abc import DeliveredMessage
from pydantic_core import from_json

from repid.brokers.base import Delivery
from repid.codec import decode_message
from repid.data import DeadLetterInfo, MessageCategory, Parameters, RoutingKey
from repid.errors import DecodeError

__all__ = ["CHANNEL_ERRORS", "DEAD_INFO_HEADER", "Bands", "ChannelState", "Handle", "to_delivery"]

logger = logging.getLogger("repid.brokers.rabbitmq")

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
    max_size: int | None = None,
) -> Delivery:
    """Decode one AMQP message into a delivery (an undecodable one keeps its raw bytes; one
    longer than `max_size` bytes is undecodable)."""
    tag: int = message.delivery.delivery_tag  # type: ignore[union-attr, assignment]
    redelivered = bool(message.delivery.redelivered)  # type: ignore[union-attr]
    body = message.body
    handle = Handle(state, tag, source)
    try:
        key, payload, params = decode_message(body, max_size)
    except DecodeError as exc:
        props = message.header.properties
        priority = 2 - (props.priority or 0) if props.priority is not None else 1
        params = Parameters()
        headers = props.headers or {}
        info = headers.get(DEAD_INFO_HEADER)
        if isinstance(info, (bytes, str)):
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


class Bands:
    """Deliveries waiting in a consumer, one FIFO per priority (quorum queues: the messages of
    the three priority queues arrive side by side; the highest priority is handed out first)."""

    __slots__ = ("_bands",)

    def __init__(self) -> None:
        self._bands: tuple[deque[Delivery], ...] = (deque(), deque(), deque())

    def _band(self, delivery: Delivery) -> deque[Delivery]:
        return self._bands[min(max(delivery.key.priority, 0), 2)]

    def append(self, delivery: Delivery) -> None:
        self._band(delivery).append(delivery)

    def appendleft(self, delivery: Delivery) -> None:
        self._band(delivery).appendleft(delivery)

    def popleft(self) -> Delivery:
        for band in self._bands:
            if band:
                return band.popleft()
        raise IndexError("pop from an empty Bands")

    def clear(self) -> None:
        for band in self._bands:
            band.clear()

    def best(self) -> int | None:
        """The highest priority (0 = HIGH) waiting here, None if nothing waits."""
        for number, band in enumerate(self._bands):
            if band:
                return number
        return None

    def __bool__(self) -> bool:
        return any(self._bands)

    def __len__(self) -> int:
        return sum(len(band) for band in self._bands)
