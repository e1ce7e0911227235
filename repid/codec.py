"""The wire envelope that network brokers store: one JSON object per message.

`{"v": 1, "k": [id, topic, queue, priority], "p": payload, "m": parameters}`. Brokers that move
bytes call `encode_message`/`decode_message`; a body that is not such an envelope raises
`DecodeError`, and the broker hands it to the worker as an undecodable delivery (the raw bytes are
kept in the dead letter). A body longer than the broker's `max_message_size` is not parsed at all:
it is undecodable too, so bytes put on a queue by another client cannot exhaust a worker's memory.
"""

from __future__ import annotations

from typing import Any

from pydantic_core import from_json, to_json

from repid.data import Parameters, RoutingKey
from repid.errors import DecodeError

__all__ = ["ENVELOPE_VERSION", "decode_message", "encode_message"]

ENVELOPE_VERSION = 1


def encode_message(key: RoutingKey, payload: str, parameters: Parameters) -> bytes:
    """Serialise one message into its envelope bytes."""
    return to_json(
        {"v": ENVELOPE_VERSION, "k": key.encode(), "p": payload, "m": parameters.encode()}
    )


def decode_message(
    raw: bytes | str, max_size: int | None = None
) -> tuple[RoutingKey, str, Parameters]:
    """Parse envelope bytes; raise `DecodeError` saying what is wrong.

    Args:
        raw: the message body as the broker stored it.
        max_size: the broker's `max_message_size`; a longer body is rejected unparsed.
    """
    if max_size is not None and len(raw) > max_size:
        raise DecodeError(
            f"message of {len(raw)} bytes is larger than max_message_size ({max_size})"
        )
    try:
        obj: Any = from_json(raw)
    except ValueError as exc:
        raise DecodeError(f"payload is not valid JSON: {exc}") from exc
    if not isinstance(obj, dict) or obj.get("v") != ENVELOPE_VERSION:
        raise DecodeError("payload is not a repid envelope (missing or unknown 'v')")
    try:
        key = RoutingKey.decode(obj["k"])
        payload = obj["p"]
        if not isinstance(payload, str):
            raise TypeError("payload must be a string")
        parameters = Parameters.decode(obj["m"])
    except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError) as exc:
        raise DecodeError(f"malformed repid envelope: {exc!r}") from exc
    return key, payload, parameters
