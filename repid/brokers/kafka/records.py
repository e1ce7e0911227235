"""Kafka records <-> repid deliveries: the envelope codec, and the marker records (header
`repid-remove`) that stand for deleting earlier records, which Kafka cannot do."""

from __future__ import annotations

from typing import Any, NamedTuple

from aiokafka import ConsumerRecord
from pydantic_core import from_json

from repid.brokers.base import Delivery
from repid.codec import decode_message, encode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import DecodeError

__all__ = [
    "DEAD_HEADER",
    "REMOVE_HEADER",
    "Removal",
    "decode_record",
    "encode_delivery",
    "matches",
    "removal_of",
]

REMOVE_HEADER = "repid-remove"
"""A record with this header removes earlier records of the same message (see `Removal`)."""
DEAD_HEADER = "repid-dead"
"""Dead letter of undecodable bytes: the raw bytes are the value, the parameters this header."""


class Removal(NamedTuple):
    """Removes earlier records of message `id_` (created at `timestamp`; None: any)."""

    id_: str
    timestamp: float | None


def removal_of(record: ConsumerRecord[Any, Any]) -> Removal | None:
    """The removal a marker record stands for (None: an ordinary record)."""
    for name, value in record.headers or ():
        if name == REMOVE_HEADER:
            id_, timestamp = from_json(value)
            return Removal(id_, timestamp)
    return None


def matches(removal: Removal, delivery: Delivery) -> bool:
    """`removal` removes `delivery`."""
    if delivery.key.id_ != removal.id_:
        return False
    ts = removal.timestamp
    return ts is None or abs(delivery.parameters.timer.timestamp.timestamp() - ts) < 1e-6


_NORMAL = MessageCategory.NORMAL


def decode_record(
    record: ConsumerRecord[Any, Any],
    queue_name: str,
    handle: Any = None,
    max_size: int | None = None,
) -> Delivery:
    """A delivery with `handle` from a record (a dead letter to be when it does not decode or
    is longer than `max_size`: `decode_error` set, the raw bytes kept)."""
    raw: bytes = record.value or b""
    try:
        key, payload, params = decode_message(raw, max_size)
    except DecodeError as exc:
        dead = None
        for name, value in record.headers or ():
            if name == DEAD_HEADER:
                dead = Parameters.decode(from_json(value))
        key = RoutingKey(f"raw-{record.topic}-{record.partition}-{record.offset}", "", queue_name)
        return Delivery(key, "", dead or Parameters(), handle, raw=raw, decode_error=str(exc))
    # tuple.__new__ skips the named tuple's Python-level constructor (hot path).
    delivery: Delivery = tuple.__new__(
        Delivery, (key, payload, params, handle, _NORMAL, None, None, False)
    )
    return delivery


def encode_delivery(delivery: Delivery) -> bytes:
    """The record value that carries `delivery` again (its raw bytes if it did not decode)."""
    if delivery.decode_error is not None:
        return delivery.raw or b""
    return encode_message(delivery.key, delivery.payload, delivery.parameters)
