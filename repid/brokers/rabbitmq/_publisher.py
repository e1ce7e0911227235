"""Publishing in batches (a fast path): the publishes of one event-loop tick leave in one write,
each with its own publisher confirm registered as `basic_publish` registers it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from typing import Any

import aiormq
import pamqp.frame
from pamqp import commands as spec
from pamqp.header import ContentHeader

from repid.brokers.rabbitmq import _compat

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
        try:
            frames = self._marshal(channel, items)
        except Exception as exc:
            # Nothing was numbered or written: each message takes the public path instead.
            await self._fall_back(channel, items, exc)
            return
        try:
            async with _compat.channel_lock(channel):
                first = _compat.next_delivery_tag(channel)
                try:
                    for *_, properties, _mandatory, done in items:
                        if done is None:
                            _compat.skip_delivery_tag(channel)
                        else:
                            message_id = properties.message_id or ""
                            confirmation = _compat.register_confirm(channel, message_id)
                            confirmation.add_done_callback(_forward(done))
                    await _compat.write_frames(channel, b"".join(frames))
                except BaseException:
                    # Not written: the server never numbers these (as `basic_publish` undoes).
                    _compat.unnumber(channel, first)
                    raise
        except BaseException as exc:
            for *_, done in items:
                if done is not None and not done.done():
                    done.set_exception(exc)
            raise

    def _marshal(self, channel: Any, items: list[_Item]) -> list[bytes]:
        """The frames of each message (method, content header, body), by hand where repid's
        own properties allow it."""
        number = channel.number
        max_size = channel.max_content_size
        if self._methods_of is not channel:
            self._methods_of, self._methods = channel, {}
        methods = self._methods
        out: list[bytes] = []
        for exchange, routing_key, body, properties, mandatory, _ in items:
            method = methods.get((exchange, routing_key, mandatory))
            if method is None:
                publish = spec.Basic.Publish(
                    exchange=exchange, routing_key=routing_key, mandatory=mandatory
                )
                method = pamqp.frame.marshal(publish, number)
                if len(methods) < 10_000:
                    methods[(exchange, routing_key, mandatory)] = method
            parts = [method, header_frame(number, properties, len(body))]
            parts.extend(body_frames(number, body, max_size))
            out.append(b"".join(parts))
        return out

    async def _fall_back(self, channel: Any, items: list[_Item], exc: Exception) -> None:
        _compat.log_fallback_once("marshalling a publish batch", exc)
        for exchange, routing_key, body, properties, mandatory, done in items:
            if done is None:
                with contextlib.suppress(*_SEND_ERRORS):
                    await channel.basic_publish(
                        body,
                        exchange=exchange,
                        routing_key=routing_key,
                        properties=properties,
                        mandatory=mandatory,
                        wait=False,
                    )
            elif not done.done():
                done.set_exception(_compat.FastPathError(exc))


_SEND_ERRORS = (aiormq.exceptions.AMQPError, aiormq.exceptions.ChannelInvalidStateError, OSError)


def _forward(done: asyncio.Future[Any]) -> Any:
    def forward(confirmation: asyncio.Future[Any]) -> None:
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
