"""Kafka's produce request (versions 3 to 8) for one batch, and its response, as bytes.

Pure wire format from the Kafka protocol; `_compat` plugs it into aiokafka's connection.
"""

from __future__ import annotations

import struct
from typing import Any

__all__ = [
    "HAND_ENCODED_VERSIONS",
    "ProduceResponse",
    "decode_produce_response",
    "encode_one_batch",
    "encode_request_header",
    "read_correlation_id",
]

HAND_ENCODED_VERSIONS = range(3, 9)
"""Produce request versions encoded here: 3 to 8 share one layout (9 is a flexible version)."""

_HEADER = struct.Struct(">hhih")  # api key, api version, correlation id, client id length
_BODY_START = struct.Struct(">hhii")  # null transactional id, acks, timeout ms, 1 topic
_PARTITION = struct.Struct(">iii")  # 1 partition, its index, records length
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_PARTITION_REPLY = struct.Struct(">ihqq")  # index, error code, base offset, log append time
_I64 = struct.Struct(">q")


def encode_request_header(version: int, correlation_id: int, client_id: str) -> bytes:
    """The request header of a produce request (API key 0)."""
    client = client_id.encode()
    return _HEADER.pack(0, version, correlation_id, len(client)) + client


def encode_one_batch(acks: int, timeout_ms: int, topic: str, partition: int, data: bytes) -> bytes:
    """The body of a produce request carrying one record batch to one partition."""
    name = topic.encode()
    return b"".join(
        (
            _BODY_START.pack(-1, acks, timeout_ms, 1),
            _I16.pack(len(name)),
            name,
            _PARTITION.pack(1, partition, len(data)),
            data,
        )
    )


def read_correlation_id(head: bytes) -> int:
    """The correlation id of a response header (4 bytes)."""
    return int(_I32.unpack(head)[0])


class ProduceResponse:
    """A decoded produce response, shaped as aiokafka's (`topics`, `API_VERSION`)."""

    __slots__ = ("API_VERSION", "throttle_time_ms", "topics")

    def __init__(self, version: int, topics: list[Any], throttle_time_ms: int) -> None:
        self.API_VERSION = version
        self.topics = topics
        self.throttle_time_ms = throttle_time_ms

    def __repr__(self) -> str:
        return f"ProduceResponse_v{self.API_VERSION}(topics={self.topics!r})"


def _string(data: bytes, pos: int) -> tuple[str | None, int]:
    size = _I16.unpack_from(data, pos)[0]
    pos += 2
    if size < 0:
        return None, pos
    if pos + size > len(data):
        raise ValueError("Buffer underrun decoding string")
    return data[pos : pos + size].decode(), pos + size


def decode_produce_response(version: int, data: bytes) -> ProduceResponse:
    """A produce response body (versions 3 to 8), as aiokafka's decoder gives it."""
    pos = 0
    topics = []
    (count,) = _I32.unpack_from(data, pos)
    pos += 4
    for _ in range(count):
        topic, pos = _string(data, pos)
        (partitions,) = _I32.unpack_from(data, pos)
        pos += 4
        replies: list[tuple[Any, ...]] = []
        for _ in range(partitions):
            reply: tuple[Any, ...] = _PARTITION_REPLY.unpack_from(data, pos)
            pos += _PARTITION_REPLY.size
            if version >= 5:
                reply += _I64.unpack_from(data, pos)
                pos += 8
            if version >= 8:
                (errors,) = _I32.unpack_from(data, pos)
                pos += 4
                record_errors = []
                for _ in range(errors):
                    (index,) = _I32.unpack_from(data, pos)
                    message, pos = _string(data, pos + 4)
                    record_errors.append((index, message))
                message, pos = _string(data, pos)
                reply += (record_errors, message)
            replies.append(reply)
        topics.append((topic, replies))
    (throttle,) = _I32.unpack_from(data, pos)
    return ProduceResponse(version, topics, throttle)
