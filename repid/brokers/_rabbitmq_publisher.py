"""Confirmed publishing in batches: the publishes of one event-loop tick leave in one write.

aiormq writes each `basic_publish` separately (one socket send per message); gathering the
publishes made in the same tick and marshalling them into one frame batch keeps the per-message
cost to the frames themselves. Each message still gets its own publisher confirm (and its own
`mandatory` return), registered with the channel exactly as `basic_publish` does.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq
import pamqp.frame
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.header import ContentHeader

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


_Item = tuple[str, str, bytes, spec.Basic.Properties, bool, "asyncio.Future[Any]"]


def supports_batches(channel: Any) -> bool:
    """The aiormq channel exposes what batching needs (else publish one by one)."""
    return all(
        hasattr(channel, name)
        for name in ("confirmations", "message_id_delivery_tag", "delivery_tag", "write_queue")
    )


class ConfirmBatcher:
    """Publishes on one confirming channel; `publish` returns once RabbitMQ confirmed."""

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._flushing = False
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

    async def _send(self, channel: Any, items: list[_Item]) -> None:
        if channel.is_closed:
            error = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            for *_, done in items:
                if not done.done():
                    done.set_exception(error)
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
