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
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import aiormq.connection
import pamqp.frame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.exceptions import PAMQPException
from pamqp.header import ContentHeader

__all__ = ["install", "unmarshal"]

_FRAME_HEAD = struct.Struct(">BHI")
_FRAME_END = 0xCE
_DELIVER = (60 << 16) | 60  # class basic, method deliver
_I64 = struct.Struct(">q")  # pamqp decodes longlong signed
_HEADER_START = struct.Struct(">HHQH")
# Property flags of the properties repid sets: content_type, delivery_mode, priority, message_id.
_OUR_FLAGS = (1 << 15) | (1 << 12) | (1 << 11) | (1 << 7)
_Deliver = spec.Basic.Deliver
_Properties = spec.Basic.Properties


def _short_str(raw: bytes, pos: int) -> tuple[str, int]:
    size = raw[pos]
    return raw[pos + 1 : pos + 1 + size].decode(), pos + 1 + size


def _fast(raw: bytes, kind: int, size: int) -> Any:
    """The frame object of `raw` for the three hot kinds, or None (left to pamqp)."""
    if kind == 3:  # body
        return ContentBody(raw[7 : 7 + size])
    if kind == 1:  # method
        if int.from_bytes(raw[7:11], "big") != _DELIVER:
            return None
        deliver = _Deliver.__new__(_Deliver)
        deliver.consumer_tag, pos = _short_str(raw, 11)
        deliver.delivery_tag = _I64.unpack_from(raw, pos)[0]
        deliver.redelivered = (raw[pos + 8] & 1) != 0
        deliver.exchange, pos = _short_str(raw, pos + 9)
        deliver.routing_key, pos = _short_str(raw, pos)
        return deliver if pos == 7 + size else None
    if kind == 2:  # content header
        class_id, weight, body_size, flags = _HEADER_START.unpack_from(raw, 7)
        if flags != _OUR_FLAGS:
            return None
        properties = _Properties()
        properties.content_type, pos = _short_str(raw, 21)
        properties.delivery_mode = raw[pos]
        properties.priority = raw[pos + 1]
        properties.message_id, pos = _short_str(raw, pos + 2)
        if pos != 7 + size:
            return None
        header = ContentHeader(weight, body_size, properties)
        header.class_id = class_id
        return header
    return None


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
        reader = getattr(self, "reader", None)  # aiormq deletes it at end of stream
        if reader is not None and self.started and not self.lock.locked():
            buffer = getattr(reader, "_buffer", None)
            if buffer is not None and len(buffer) >= 8 and reader.exception() is None:
                end = int.from_bytes(buffer[3:7], "big") + 8
                if len(buffer) >= end:
                    raw = bytes(buffer[:end])
                    del buffer[:end]
                    reader._maybe_resume_transport()
                    try:
                        return unmarshal(raw)
                    except PAMQPException as exc:
                        raise invalid_frame(str(exc)) from exc
        return await original(self)

    get_frame._repid_fast = True  # type: ignore[attr-defined]
    receiver.get_frame = get_frame
