"""Confirmed publishing in batches: the publishes of one event-loop tick leave in one write.

aiormq writes each `basic_publish` separately (one socket send per message); gathering the
publishes made in the same tick and marshalling them into one frame batch keeps the per-message
cost to the frames themselves. Each message still gets its own publisher confirm (and its own
`mandatory` return), registered with the channel exactly as `basic_publish` does.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.header import ContentHeader

logger = logging.getLogger("repid.brokers.rabbitmq")

_FRAME = struct.Struct(">BHI")
_FRAME_END = b"\xce"
_HEADER_START = struct.Struct(">HHQH")
_BASIC_CLASS = 60
# Property flags of the properties repid sets: content_type, delivery_mode, priority, message_id.
_OUR_FLAGS = (1 << 15) | (1 << 12) | (1 << 11) | (1 << 7)


def _frame(kind: int, channel: int, payload: bytes) -> bytes:
    return _FRAME.pack(kind, channel, len(payload)) + payload + _FRAME_END


def _short_str(value: str) -> bytes:
    raw = value.encode()
    return bytes((len(raw),)) + raw


def header_frame(channel: int, properties: spec.Basic.Properties, body_size: int) -> bytes:
    """The content header frame of a message, marshalled by hand for repid's own properties
    (content type, delivery mode, priority, message id); by pamqp for anything else."""
    if (
        properties.headers is None
        and properties.content_type is not None
        and properties.delivery_mode is not None
        and properties.priority is not None
        and properties.message_id is not None
    ):
        payload = b"".join(
            (
                _HEADER_START.pack(_BASIC_CLASS, 0, body_size, _OUR_FLAGS),
                _short_str(properties.content_type),
                bytes((properties.delivery_mode, properties.priority)),
                _short_str(properties.message_id),
            )
        )
        return _frame(2, channel, payload)
    return pamqp.frame.marshal(ContentHeader(properties=properties, body_size=body_size), channel)


def body_frames(channel: int, body: bytes, max_size: int) -> list[bytes]:
    return [
        _frame(3, channel, body[start : start + max_size])
        for start in range(0, len(body), max_size)
    ]


_Item = tuple[str, str, bytes, spec.Basic.Properties, bool, "asyncio.Future[Any] | None"]
_FAST_BATCH = 256
"""Unconfirmed publishes buffered at most before the publisher waits for the socket."""


def supports_batches(channel: Any) -> bool:
    """The aiormq channel exposes what batching needs (else publish one by one)."""
    return all(
        hasattr(channel, name)
        for name in (
            "confirmations",
            "message_id_delivery_tag",
            "delivery_tag",
            "write_queue",
            "publisher_confirms",
            "max_content_size",
        )
    )


class PublishBatcher:
    """Publishes on one channel. On a confirming channel `publish` returns once RabbitMQ
    confirmed the message; on another, once the message is queued for the socket."""

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._flushing = False
        self._flush_tasks: set[asyncio.Task[None]] = set()
        self._methods_of: Any = None
        self._methods: dict[tuple[str, str, bool], bytes] = {}
        """Marshalled `basic.publish` frames of the current channel, by destination."""

    async def publish(
        self,
        channel: aiormq.abc.AbstractChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        if not getattr(channel, "publisher_confirms", True):
            # Nothing to wait for: buffer it, send the buffer on the next loop iteration.
            self._items.append((exchange, routing_key, body, properties, mandatory, None))
            if len(self._items) >= _FAST_BATCH:
                items, self._items = self._items, []
                await self._send(channel, items)  # backpressure on a producer that never yields
            elif not self._flushing:
                self._flushing = True
                asyncio.get_running_loop().call_soon(self._flush_soon, channel)
            return
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._items.append((exchange, routing_key, body, properties, mandatory, done))
        if not self._flushing:
            self._flushing = True
            try:
                await asyncio.sleep(0)  # the other publishes of this tick join the batch
            finally:
                self._flushing = False
            items, self._items = self._items, []
            await self._send(channel, items)
        await done

    def _flush_soon(self, channel: Any) -> None:
        self._flushing = False
        items, self._items = self._items, []
        if items:
            task = asyncio.ensure_future(self._send(channel, items))
            self._flush_tasks.add(task)
            task.add_done_callback(self._flush_tasks.discard)

    async def drain(self) -> None:
        """Wait until buffered unconfirmed publishes are handed to the socket."""
        await asyncio.sleep(0)  # a flush scheduled with call_soon starts its task
        if self._flush_tasks:
            await asyncio.gather(*self._flush_tasks, return_exceptions=True)

    async def _send(self, channel: Any, items: list[_Item]) -> None:
        if channel.is_closed:
            error = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            lost = 0
            for *_, done in items:
                if done is None:
                    lost += 1
                elif not done.done():
                    done.set_exception(error)
            if lost:
                logger.warning("%d unconfirmed messages lost: their channel closed", lost)
            return
        parts: list[bytes] = []
        number = channel.number
        max_size = channel.max_content_size
        if self._methods_of is not channel:
            self._methods_of, self._methods = channel, {}
        methods = self._methods
        async with channel.lock:
            for exchange, routing_key, body, properties, mandatory, done in items:
                channel.delivery_tag += 1
                if done is not None:
                    tag = channel.delivery_tag
                    confirmation = channel.create_future()
                    channel.confirmations[tag] = confirmation
                    message_id: str = properties.message_id or str(tag)
                    channel.message_id_delivery_tag[message_id] = tag
                    confirmation.add_done_callback(_forward(channel, message_id, tag, done))
                method = methods.get((exchange, routing_key, mandatory))
                if method is None:
                    publish = spec.Basic.Publish(
                        exchange=exchange, routing_key=routing_key, mandatory=mandatory
                    )
                    method = pamqp.frame.marshal(publish, number)
                    if len(methods) < 10_000:
                        methods[(exchange, routing_key, mandatory)] = method
                parts.append(method)
                parts.append(header_frame(number, properties, len(body)))
                parts.extend(body_frames(number, body, max_size))
            await channel.write_queue.put(ChannelFrame(payload=b"".join(parts), should_close=False))


def _forward(channel: Any, message_id: str, tag: int, done: asyncio.Future[Any]) -> Any:
    def forward(confirmation: asyncio.Future[Any]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            channel.message_id_delivery_tag.pop(message_id)
        if done.done():
            return
        if confirmation.cancelled():
            done.set_exception(aiormq.exceptions.ChannelInvalidStateError("channel closed"))
        elif (exc := confirmation.exception()) is not None:
            done.set_exception(exc)
        elif isinstance(confirmation.result(), spec.Basic.Nack):
            done.set_exception(aiormq.exceptions.DeliveryError(None, confirmation.result()))
        else:
            done.set_result(None)

    return forward
