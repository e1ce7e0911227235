"""Faster AMQP frame reading for the connections repid opens (one `FrameReader` each).

Whole frames are taken straight from the stream's buffer and the hot frames decoded by hand;
whole deliveries to repid's consumers are handed over in one step. See docs/brokers/rabbitmq.md.
"""

from __future__ import annotations

import dataclasses
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import pamqp.frame
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

from repid.brokers.rabbitmq import _compat

__all__ = ["Assembly", "FrameReader", "InlineConsumers", "deliver_inline", "unmarshal"]

logger = logging.getLogger("repid.brokers.rabbitmq")

InlineConsumers = dict[str, tuple[Any, Callable[[DeliveredMessage], None]]]
"""Consumer tag -> (channel, synchronous callback) of the consumers served from the reader."""

_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = 0xCE
_DELIVER = (60 << 16) | 60  # class basic, method deliver
_I64 = struct.Struct(">q")  # pamqp decodes longlong signed
_U32 = struct.Struct(">I")
_HEADER_START = struct.Struct(">HHQH")
# Property flags of the properties repid sets: content_type, delivery_mode, priority, message_id.
_OUR_FLAGS = (1 << 15) | (1 << 12) | (1 << 11) | (1 << 7)
_Deliver = spec.Basic.Deliver
_Properties = spec.Basic.Properties
_DELIVERY_PARTS = (_Deliver, ContentHeader, ContentBody)
_KEEPALIVE = 1.0
"""While it only hands deliveries over, the reader still returns a frame this often (a heartbeat,
which aiormq ignores): aiormq takes a connection that returned no frame for a few heartbeat
intervals for a dead one."""


def _short_str(raw: bytes, pos: int) -> tuple[str, int]:
    size = raw[pos]
    return raw[pos + 1 : pos + 1 + size].decode(), pos + 1 + size


def _deliver_at(raw: bytes, pos: int) -> tuple[Any, int]:
    """The `basic.deliver` arguments starting at `pos`: (frame object, end position)."""
    deliver = _Deliver.__new__(_Deliver)
    deliver.consumer_tag, pos = _short_str(raw, pos)
    deliver.delivery_tag = _I64.unpack_from(raw, pos)[0]
    deliver.redelivered = (raw[pos + 8] & 1) != 0
    deliver.exchange, pos = _short_str(raw, pos + 9)
    deliver.routing_key, pos = _short_str(raw, pos)
    return deliver, pos


def _header_at(raw: bytes, pos: int) -> tuple[ContentHeader | None, int]:
    """The content header payload starting at `pos`: (header, end position); None if its
    properties are not exactly the ones repid publishes."""
    class_id, weight, body_size, flags = _HEADER_START.unpack_from(raw, pos)
    if flags != _OUR_FLAGS:
        return None, pos
    properties = _Properties()
    properties.content_type, pos = _short_str(raw, pos + 14)
    properties.delivery_mode = raw[pos]
    properties.priority = raw[pos + 1]
    properties.message_id, pos = _short_str(raw, pos + 2)
    header = ContentHeader(weight, body_size, properties)
    header.class_id = class_id
    return header, pos


def _fast(raw: bytes, kind: int, size: int) -> Any:
    """The frame object of `raw` for the three hot kinds, or None (left to pamqp)."""
    if kind == 3:  # body
        return ContentBody(raw[7 : 7 + size])
    if kind == 1:  # method
        if int.from_bytes(raw[7:11], "big") != _DELIVER:
            return None
        deliver, pos = _deliver_at(raw, 11)
        return deliver if pos == 7 + size else None
    if kind == 2:  # content header
        header, pos = _header_at(raw, 7)
        return header if pos == 7 + size else None
    return None


def _whole_delivery(buffer: bytearray) -> tuple[int, int, Any, ContentHeader, bytes] | None:
    """The delivery at the start of `buffer` when it is there whole and plain: a deliver frame,
    a content header with exactly repid's properties and one body frame, all on one channel.

    Returns (bytes used, channel, deliver, header, body), the objects `unmarshal` would build
    frame by frame; None for anything else (the caller then reads frame by frame).
    """
    size = len(buffer)
    if size < 8:
        return None
    kind, channel, length = _FRAME_HEAD.unpack_from(buffer)
    header_at = length + 8
    if kind != 1 or size < header_at + 8:
        return None
    kind, header_channel, length = _FRAME_HEAD.unpack_from(buffer, header_at)
    body_at = header_at + length + 8
    if kind != 2 or size < body_at + 8:
        return None
    kind, body_channel, length = _FRAME_HEAD.unpack_from(buffer, body_at)
    end = body_at + length + 8
    if kind != 3 or size < end or header_channel != channel or body_channel != channel:
        return None
    raw = bytes(buffer[:end])
    if (
        raw[header_at - 1] != _FRAME_END
        or raw[body_at - 1] != _FRAME_END
        or raw[end - 1] != _FRAME_END
        or _U32.unpack_from(raw, 7)[0] != _DELIVER
    ):
        return None
    try:
        deliver, pos = _deliver_at(raw, 11)
        if pos != header_at - 1:
            return None
        header, pos = _header_at(raw, header_at + 7)
    except (IndexError, ValueError, struct.error):
        return None  # malformed: read frame by frame, pamqp says what is wrong
    if header is None or pos != body_at - 1 or header.body_size != end - body_at - 8:
        return None
    return end, channel, deliver, header, raw[body_at + 7 : end - 1]


def unmarshal(raw: bytes) -> tuple[int, int, Any]:
    """`pamqp.frame.unmarshal` of one whole frame: (bytes used, channel, frame object)."""
    if len(raw) >= 8:
        kind, channel, size = _FRAME_HEAD.unpack_from(raw)
        if size and len(raw) == size + 8 and raw[size + 7] == _FRAME_END:
            try:
                frame = _fast(raw, kind, size)
            except (IndexError, ValueError, struct.error):
                frame = None  # malformed: pamqp says what is wrong
            if frame is not None:
                return size + 8, channel, frame
    return pamqp.frame.unmarshal(raw)


class Assembly:
    """A delivery whose content frames are still to come; complete, it goes to `on_message`.

    The connection's reader uses it for registered consumers, and the channel's reader (see
    `consumer.deliver_inline`) for a delivery that took aiormq's path."""

    __slots__ = ("channel", "deliver", "header", "on_message", "parts", "received")

    def __init__(self, deliver: Any, channel: Any, on_message: Callable[..., None]) -> None:
        self.deliver = deliver
        self.channel = channel
        self.on_message = on_message
        self.header: ContentHeader | None = None
        self.parts: list[bytes] = []
        self.received = 0

    def add(self, frame: Any) -> bool:
        """Take the next content frame; True once the delivery is complete (and handed over)."""
        if self.header is None:
            if not isinstance(frame, ContentHeader):
                raise _invalid_content(frame)
            self.header = frame
        else:
            if not isinstance(frame, ContentBody):
                raise _invalid_content(frame)
            self.parts.append(frame.value)
            self.received += len(frame.value)
        if self.received < (self.header.body_size or 0):
            return False
        parts = self.parts
        body = parts[0] if len(parts) == 1 else b"".join(parts)
        _hand_over(self.on_message, self.deliver, self.header, body, self.channel)
        return True


def _hand_over(
    on_message: Callable[[DeliveredMessage], None],
    deliver: Any,
    header: ContentHeader,
    body: bytes,
    channel: Any,
) -> None:
    message = _message(deliver, header, body, channel)
    try:
        on_message(message)
    except Exception:  # a bug of ours must not stop the connection's reader
        logger.exception("handling a delivery failed; it returns when the channel closes")


def _message_by_init(deliver: Any, header: Any, body: bytes, channel: Any) -> DeliveredMessage:
    return DeliveredMessage(delivery=deliver, header=header, body=body, channel=channel)


def _pick_message_factory() -> Callable[[Any, Any, bytes, Any], DeliveredMessage]:
    """The fast factory when `DeliveredMessage` is the plain dataclass it builds (checked by
    comparing with what its own constructor makes), else its constructor."""
    try:
        fast = _compat.new_delivered_message(1, 2, b"3", 4)
        if dataclasses.fields(fast) and fast == _message_by_init(1, 2, b"3", 4):
            fill: Callable[[Any, Any, bytes, Any], DeliveredMessage] = _compat.new_delivered_message
            return fill
    except Exception:  # pragma: no cover - another aiormq
        pass
    return _message_by_init  # pragma: no cover - another aiormq


_message = _pick_message_factory()


def _invalid_content(frame: Any) -> Exception:
    return TypeError(f"unexpected frame {frame!r} in the content of a delivery")


def _content(partial: dict[int, Assembly], number: int, frame: Any) -> bool:
    """Route a frame of channel `number` to its assembly; False if it is not for one."""
    assembly = partial.get(number)
    if assembly is None:
        return False
    if not isinstance(frame, ContentHeader | ContentBody):
        # AMQP never interleaves a channel's content with other frames: the delivery is dead
        # (e.g. its channel closed); RabbitMQ redelivers it.
        del partial[number]
        return False
    if assembly.add(frame):
        del partial[number]
    return True


_HANDED = object()
"""`FrameReader._take_buffered` handed a whole delivery over (no frame to return)."""


class FrameReader:
    """The frame reader of one aiormq connection repid opened (bound to that connection's
    `FrameReceiver` instance only; aiormq's class and every other connection are untouched).

    Each call takes a whole frame from the stream buffer when one is there, else runs aiormq's
    own `get_frame`; on any unexpected error of its own it runs aiormq's code for that call
    (logged once). Deliveries to the consumers in `consumers` are handed over whole.
    """

    __slots__ = ("consumers", "original", "partial", "receiver", "returned")

    def __init__(self, receiver: Any, consumers: InlineConsumers) -> None:
        self.receiver = receiver
        self.consumers = consumers
        self.partial: dict[int, Assembly] = {}
        """Channel number -> the delivery whose content frames are still to come."""
        self.returned = time.monotonic()
        self.original = _compat.bind_get_frame(receiver, self.get_frame)

    def unbind(self) -> None:
        """Give the receiver back to aiormq's own method."""
        _compat.unbind_get_frame(self.receiver)

    async def get_frame(self) -> _compat.ReceivedFrame:
        """The next frame for aiormq's connection reader (what `FrameReceiver.get_frame` does)."""
        consumers = self.consumers
        while True:
            try:
                taken = self._take_buffered()
            except Exception as exc:
                _compat.log_fallback_once("reading a frame", exc)
                taken = None
            if taken is None:
                received: _compat.ReceivedFrame = await self.original()
            elif taken is _HANDED:
                if self._keepalive_due():
                    return 8, 0, Heartbeat()
                continue
            else:
                received = taken
            if not consumers and not self.partial:
                return received
            try:
                absorbed = self._route(received)
            except Exception as exc:
                _compat.log_fallback_once("routing a frame", exc)
                self.partial.pop(received[1], None)
                absorbed = False
            if not absorbed:
                self.returned = time.monotonic()
                return received
            if self._keepalive_due():
                return 8, 0, Heartbeat()

    def _keepalive_due(self) -> bool:
        now = time.monotonic()
        if now - self.returned >= _KEEPALIVE:
            self.returned = now
            return True
        return False

    def _take_buffered(self) -> Any:
        """A whole frame out of the buffer, `_HANDED`, or None (aiormq's code reads)."""
        receiver = self.receiver
        if not _compat.receiver_idle(receiver):
            return None
        buffer = _compat.buffered(receiver)
        if buffer is None or len(buffer) < 8:
            return None
        end = int.from_bytes(buffer[3:7], "big") + 8
        if len(buffer) < end:
            return None
        if self.consumers and buffer[0] == 1:
            parsed = _whole_delivery(buffer)
            if parsed is not None:
                used, number, deliver, header, body = parsed
                entry = None if number in self.partial else self._consumer_for(deliver, number)
                if entry is not None:
                    del buffer[:used]
                    _compat.resume_reading(receiver)
                    _hand_over(entry[1], deliver, header, body, entry[0])
                    return _HANDED
        try:
            received = unmarshal(bytes(buffer[:end]))
        except PAMQPException:
            return None  # aiormq's own code reads it and raises its own error
        del buffer[:end]
        _compat.resume_reading(receiver)
        return received

    def _consumer_for(self, deliver: Any, number: int) -> Any:
        """(channel, callback) of the registered consumer of a deliver frame on channel
        `number`, if the reader may hand it the delivery: its channel is open and has no
        delivery queued (an earlier delivery of the channel is never overtaken)."""
        entry = self.consumers.get(deliver.consumer_tag or "")
        if entry is None:
            return None
        channel = entry[0]
        if (
            channel.number != number
            or channel.is_closed
            or _compat.deliveries_queued(channel, _DELIVERY_PARTS)
        ):
            return None
        return entry

    def _route(self, received: _compat.ReceivedFrame) -> bool:
        """True if the frame went into a delivery being assembled for a registered consumer."""
        _, number, frame = received
        partial = self.partial
        if partial and _content(partial, number, frame):
            return True
        if type(frame) is not _Deliver:
            return False
        entry = self._consumer_for(frame, number)
        if entry is None:
            return False
        partial[number] = Assembly(frame, entry[0], entry[1])
        return True


def deliver_inline(
    channel: Any, consumer_tag: str, on_message: Callable[[DeliveredMessage], None]
) -> None:
    """Run `on_message` right in the channel's reader instead of in a task per message.

    aiormq starts a task for each delivery; our callback is synchronous (it only queues the
    delivery), so calling it inline saves that task. Only on this one channel (repid's), and
    only when it has the reader hooks this relies on; otherwise aiormq's own path stays. On an
    unexpected error the delivery is handed over the way aiormq does (logged once).
    """
    hooks = _compat.channel_deliver_hooks(channel)
    if hooks is None:
        return
    original, get_frame, frames = hooks

    async def on_deliver_frame(frame: spec.Basic.Deliver) -> None:
        if frame.consumer_tag != consumer_tag:
            await original(frame)
            return
        # The content frames usually arrived with the deliver frame: take them without awaiting
        # (what the channel's `_get_frame` does when its queue is not empty).
        assembly = Assembly(frame, channel, on_message)
        while True:
            if frames.empty():
                content = await get_frame()
            else:
                content = frames.get_nowait()[1]
                frames.task_done()
            if assembly.add(content):
                return

    _compat.set_deliver_hook(channel, on_deliver_frame)
