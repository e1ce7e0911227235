"""Faster AMQP frame reading for aiormq: whole frames are taken from the stream's buffer.

aiormq reads each frame with three awaited `readexactly` calls under a lock into a `BytesIO`,
then decodes it with pamqp's generic, table-driven decoder: about half of a RabbitMQ worker's CPU
time goes there, three frames per message (deliver, content header, body). `install()` replaces
`aiormq.connection.FrameReceiver.get_frame` with a version that

- takes a frame straight out of the `StreamReader` buffer when it is there whole (and the reader
  has no pending error), without awaiting; otherwise it runs aiormq's own code;
- decodes `basic.deliver` method frames, body frames, and content headers carrying exactly the
  properties repid publishes (content type, delivery mode, priority, message id) by hand, into
  the same pamqp objects pamqp builds; any other frame, or one that does not parse, goes to pamqp
  (which raises its own errors).

It applies to every aiormq connection of the process (the objects it returns are identical,
see `tests/brokers/rabbitmq/test_frame_reader.py`). Nothing is patched when aiormq or asyncio
lack what it relies on.

A delivery to a consumer registered with `register()` goes further: the reader keeps its deliver
frame, adds the content header and body frames that follow on its channel (AMQP never interleaves
other frames of the channel with them), builds the `DeliveredMessage` and calls the consumer,
instead of returning three frames that aiormq passes one by one through the channel's queue to
the channel's reader task. It does so only when no delivery of the channel waits in its queue,
so an earlier delivery of the channel is never overtaken (the consumer acknowledges with
`multiple=True` from delivery tags in order); otherwise, and for any other frame, aiormq's path
is unchanged. The consumer registers before it subscribes, so in practice none of its
deliveries takes aiormq's path. A method frame arriving on a channel in the middle of a
delivery's content (the channel closed) drops that delivery, which RabbitMQ redelivers.

When the buffer holds a delivery's three frames whole (the usual case under load: RabbitMQ
writes them together), the reader parses them in one step (`_whole_delivery`: one copy, the
three frame heads checked for kind, channel and end marker) and hands the delivery over; a
delivery that is not all there yet, has more than one body frame, or other properties takes
the frame-by-frame path above.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import aiormq.connection
import pamqp.frame
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

__all__ = ["Assembly", "install", "register", "unmarshal", "unregister"]

logger = logging.getLogger("repid.brokers.rabbitmq")

_consumers: dict[str, tuple[Any, Callable[[DeliveredMessage], None]]] = {}
"""Consumer tag -> (channel, synchronous callback) of the consumers served from the reader."""


def register(
    consumer_tag: str, channel: Any, on_message: Callable[[DeliveredMessage], None]
) -> None:
    """Deliveries to this consumer may be handed to `on_message` by the connection's reader."""
    _consumers[consumer_tag] = (channel, on_message)


def unregister(consumer_tag: str) -> None:
    _consumers.pop(consumer_tag, None)


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
    `_rabbitmq_consumer._deliver_inline`) for a delivery that took aiormq's path."""

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


def _message_by_dict(deliver: Any, header: Any, body: bytes, channel: Any) -> DeliveredMessage:
    # aiormq's frozen dataclass, filled without its field-by-field `object.__setattr__`.
    message: DeliveredMessage = object.__new__(DeliveredMessage)
    message.__dict__.update(delivery=deliver, header=header, body=body, channel=channel)
    return message


def _pick_message_factory() -> Callable[[Any, Any, bytes, Any], DeliveredMessage]:
    """The fast factory when `DeliveredMessage` is the plain dataclass it builds (checked by
    comparing with what its own constructor makes), else its constructor."""
    try:
        fast = _message_by_dict(1, 2, b"3", 4)
        if dataclasses.fields(fast) and fast == _message_by_init(1, 2, b"3", 4):
            return _message_by_dict
    except Exception:  # pragma: no cover - another aiormq
        pass
    return _message_by_init  # pragma: no cover - another aiormq


_message = _pick_message_factory()


def _invalid_content(frame: Any) -> Exception:
    return TypeError(f"unexpected frame {frame!r} in the content of a delivery")


def _consumer_for(deliver: Any, number: int) -> tuple[Any, Callable[..., None]] | None:
    """(channel, callback) of the registered consumer of a deliver frame on channel `number`,
    if the reader may hand it the delivery: its channel is open and has nothing queued (an
    earlier delivery of the channel is never overtaken)."""
    entry = _consumers.get(deliver.consumer_tag or "")
    if entry is None:
        return None
    channel = entry[0]
    if channel.number != number or channel.is_closed or _delivery_queued(channel.frames):
        return None
    return entry


def _start_assembly(frame: Any, number: int) -> Assembly | None:
    """An assembly for a deliver frame on channel `number` (see `_consumer_for`)."""
    if type(frame) is not _Deliver:
        return None
    entry = _consumer_for(frame, number)
    return None if entry is None else Assembly(frame, entry[0], entry[1])


def _take_whole(buffer: bytearray, partial: dict[int, Assembly]) -> bool:
    """Hand over the whole delivery at the start of `buffer` to its registered consumer,
    taking it out of the buffer; False (nothing taken) if that is not what is there."""
    parsed = _whole_delivery(buffer)
    if parsed is None:
        return False
    end, number, deliver, header, body = parsed
    entry = None if number in partial else _consumer_for(deliver, number)
    if entry is None:
        return False
    del buffer[:end]
    _hand_over(entry[1], deliver, header, body, entry[0])
    return True


def _delivery_queued(frames: asyncio.Queue[tuple[int, Any]]) -> bool:
    """A delivery of the channel waits in its queue (other frames, e.g. the `ConsumeOk` of the
    subscription, may be overtaken by a delivery)."""
    queued = getattr(frames, "_queue", None)
    if queued is None:  # pragma: no cover - another asyncio
        return not frames.empty()
    return any(isinstance(frame, _DELIVERY_PARTS) for _, frame in queued)


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


def install() -> None:
    """Make aiormq's frame reader take whole buffered frames at once (idempotent)."""
    receiver: Any = getattr(aiormq.connection, "FrameReceiver", None)
    original = getattr(receiver, "get_frame", None)
    if original is None or getattr(original, "_repid_fast", False):
        return
    if not hasattr(asyncio.StreamReader, "_maybe_resume_transport"):
        return
    invalid_frame: Any = getattr(aiormq.connection, "InvalidFrameError", None)
    if invalid_frame is None:
        return

    async def get_frame(self: Any) -> Any:
        partial: dict[int, Assembly] | None = getattr(self, "_repid_partial", None)
        if partial is None:
            partial = self._repid_partial = {}
        returned: float = getattr(self, "_repid_returned", 0.0) or time.monotonic()
        while True:
            reader: Any = getattr(self, "reader", None)  # aiormq deletes it at end of stream
            buffer: Any = getattr(reader, "_buffer", None)
            end = 0  # of a whole frame at the start of the buffer, taken without awaiting
            if (
                buffer is not None
                and self.started
                and not self.lock.locked()
                and len(buffer) >= 8
                and reader.exception() is None
            ):
                end = int.from_bytes(buffer[3:7], "big") + 8
                if len(buffer) < end:
                    end = 0
            if end and _consumers and buffer[0] == 1 and _take_whole(buffer, partial):
                reader._maybe_resume_transport()
            else:
                if end:
                    raw = bytes(buffer[:end])
                    del buffer[:end]
                    reader._maybe_resume_transport()
                    try:
                        received = unmarshal(raw)
                    except PAMQPException as exc:
                        raise invalid_frame(str(exc)) from exc
                else:
                    received = await original(self)  # the next frame, however it arrives
                if not _consumers:
                    return received
                _, number, frame = received
                if not (partial and _content(partial, number, frame)):
                    assembly = _start_assembly(frame, number)
                    if assembly is None:
                        self._repid_returned = time.monotonic()
                        return received
                    partial[number] = assembly
            now = time.monotonic()
            if now - returned >= _KEEPALIVE:
                self._repid_returned = now
                return 8, 0, Heartbeat()

    get_frame._repid_fast = True  # type: ignore[attr-defined]
    receiver.get_frame = get_frame
