"""What a NATS delivery carries as its handle, and how stream messages become deliveries."""

from __future__ import annotations

import base64
import time
from typing import TYPE_CHECKING, Any

from repid.brokers.base import Delivery
from repid.brokers.nats._names import DUE_HEADER, QueueNames
from repid.codec import decode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import DecodeError

if TYPE_CHECKING:
    from nats.aio.msg import Msg

RAW_HEADER = "Repid-Raw"
"""On a dead letter of bytes that were not a repid envelope: those bytes, base64."""


class Holder:
    """The consumer a delivery was handed out by (told when it is settled)."""

    def _settled(self) -> None:
        raise NotImplementedError


class Handle:
    """One delivery of a JetStream message to this process: settles exactly that delivery."""

    __slots__ = ("consumer", "deadline", "key", "msg", "names", "seq")

    def __init__(
        self, msg: Msg, names: QueueNames, seq: int, consumer: Holder | None, lease: float
    ) -> None:
        self.msg = msg
        self.names = names
        self.seq = seq
        self.key = (names.stream, seq)
        self.consumer = consumer
        self.deadline = time.monotonic() + lease


class Browsed:
    """A dead or delayed message read (not consumed) from its stream."""

    __slots__ = ("names", "seq", "stream")

    def __init__(self, names: QueueNames, stream: str, seq: int) -> None:
        self.names = names
        self.stream = stream
        self.seq = seq


def due_of(headers: dict[str, str] | None) -> float | None:
    raw = None if not headers else headers.get(DUE_HEADER)
    return None if raw is None else float(raw)


def to_delivery(
    data: bytes,
    headers: dict[str, str] | None,
    names: QueueNames,
    priority: int,
    handle: Any,
    *,
    category: MessageCategory = MessageCategory.NORMAL,
    redelivered: bool = False,
    max_size: int | None = None,
) -> Delivery:
    raw_header = None if not headers else headers.get(RAW_HEADER)
    try:
        key, payload, params = decode_message(data, max_size)
    except DecodeError as exc:
        seq = handle.seq
        return Delivery(
            RoutingKey(f"raw-{seq}", "", names.queue, priority),
            "",
            Parameters(),
            handle,
            category=category,
            raw=data,
            decode_error=str(exc),
            redelivered=redelivered,
        )
    raw = None if raw_header is None else base64.b64decode(raw_header)
    return Delivery(
        key, payload, params, handle, category=category, raw=raw, redelivered=redelivered
    )
