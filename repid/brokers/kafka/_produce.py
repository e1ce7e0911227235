"""A shorter path for a lone `send()` through aiokafka's idempotent producer.

aiokafka hands every message to its sender task: `send()` appends to a batch, the sender task
wakes, drains the batch, starts a task for the produce request, and that task resolves the
message's future when the response arrives: four task switches per message.

`direct_send()` does the same work in the caller's own task when the partition is idle (no batch
waiting or in flight for it and no lingering wanted): it builds the batch with the accumulator's
own classes, gives it the next sequence number exactly as the accumulator does when it drains,
mutes the partition in the sender (so nothing of that partition overtakes it) and runs aiokafka's
own produce-request handler. Its request is `OneBatchProduceRequest`: the bytes aiokafka's
schema-driven encoder would write, and the response decoded into the same shape, built by hand
(the generic encoder and decoder took a third of a send's client time).

Whatever that handler does not finish (a retriable error) it puts back into the accumulator for
the sender to retry, with the same sequence number, as the sender would; a caller cancelled
meanwhile (a timeout) leaves its batch to the sender too. Messages to a busy partition take
aiokafka's usual path.

It relies on aiokafka internals; `usable()` checks that they are there, and callers use
`AIOKafkaProducer.send()` when it says no.
"""

from __future__ import annotations

import asyncio
import struct
from io import BytesIO
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.protocol.produce import ProduceRequest

try:
    from aiokafka.producer.message_accumulator import MessageBatch
    from aiokafka.producer.sender import SendProduceReqHandler
except ImportError:  # pragma: no cover - a future aiokafka
    MessageBatch = SendProduceReqHandler = None

__all__ = ["OneBatchProduceRequest", "decode_produce_response", "direct_send", "usable"]

_VERSIONS = range(3, 9)
"""Produce request versions encoded here: 3 to 8 share one layout (9 is a flexible version)."""

_HEADER = struct.Struct(">hhih")  # api key, api version, correlation id, client id length
_BODY_START = struct.Struct(">hhii")  # null transactional id, acks, timeout ms, 1 topic
_PARTITION = struct.Struct(">iii")  # 1 partition, its index, records length
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_PARTITION_REPLY = struct.Struct(">ihqq")  # index, error code, base offset, log append time
_I64 = struct.Struct(">q")


class _Header:
    __slots__ = ("correlation_id", "data")

    def __init__(self, correlation_id: int, data: bytes = b"") -> None:
        self.correlation_id = correlation_id
        self.data = data

    def encode(self) -> bytes:
        return self.data


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


class _OneBatchStruct:
    """What aiokafka's connection needs of a request struct, for one encoded produce request."""

    API_KEY = 0
    FLEXIBLE_VERSION = False

    def __init__(self, version: int, body: bytes) -> None:
        self.API_VERSION = version
        self.body = body
        self.RESPONSE_TYPE = self  # decode() below

    def build_request_header(self, correlation_id: int, client_id: str) -> _Header:
        client = client_id.encode()
        head = _HEADER.pack(0, self.API_VERSION, correlation_id, len(client))
        return _Header(correlation_id, head + client)

    def encode(self) -> bytes:
        return self.body

    def parse_response_header(self, read_buffer: BytesIO) -> _Header:
        return _Header(_I32.unpack(read_buffer.read(4))[0])

    def decode(self, read_buffer: BytesIO) -> ProduceResponse:
        return decode_produce_response(self.API_VERSION, read_buffer.read())

    def __repr__(self) -> str:
        return f"ProduceRequest_v{self.API_VERSION}(1 batch, {len(self.body)} bytes)"


class OneBatchProduceRequest(ProduceRequest):  # type: ignore[misc]
    """aiokafka's `ProduceRequest` for one batch, encoded and decoded without its generic
    (schema-walking) encoder when the server speaks a version from 3 to 8."""

    def __init__(self, required_acks: int, timeout: int, tp: TopicPartition, data: bytes) -> None:
        super().__init__(None, required_acks, timeout, [(tp.topic, [(tp.partition, data)])])
        self._tp = tp
        self._data = data

    def prepare(self, versions: dict[int, tuple[int, int]]) -> Any:
        low, high = versions.get(self.API_KEY, (0, -1))
        # The version aiokafka would pick: its newest class the server accepts.
        chosen = [c.API_VERSION for c in self._CLASSES if low <= c.API_VERSION <= high]
        if not chosen or chosen[-1] not in _VERSIONS:
            return super().prepare(versions)
        version = chosen[-1]
        topic = self._tp.topic.encode()
        body = b"".join(
            (
                _BODY_START.pack(-1, self.required_acks, self._timeout, 1),
                _I16.pack(len(topic)),
                topic,
                _PARTITION.pack(1, self._tp.partition, len(self._data)),
                self._data,
            )
        )
        return _OneBatchStruct(version, body)


if SendProduceReqHandler is not None:

    class _OneBatchHandler(SendProduceReqHandler):  # type: ignore[misc]
        def create_request(self) -> OneBatchProduceRequest:
            ((tp, batch),) = self._batches.items()
            sender = self._sender
            return OneBatchProduceRequest(
                sender._acks, sender._request_timeout_ms, tp, batch.get_data_buffer()
            )


_ACCUMULATOR = ("_batches", "_pop_batch", "create_builder", "reenqueue", "_waiter_future")
_ACCUMULATOR_SETTINGS = ("_batch_ttl", "_linger_time", "_exception", "_closed")


def usable(producer: AIOKafkaProducer) -> bool:
    """The producer is idempotent, not transactional, does not linger, and has the internals."""
    if MessageBatch is None or SendProduceReqHandler is None:
        return False  # pragma: no cover
    acc: Any = getattr(producer, "_message_accumulator", None)
    sender: Any = getattr(producer, "_sender", None)
    txn: Any = getattr(producer, "_txn_manager", None)
    if acc is None or sender is None or txn is None:
        return False
    if not all(hasattr(acc, name) for name in _ACCUMULATOR + _ACCUMULATOR_SETTINGS):
        return False
    if not hasattr(sender, "_muted_partitions") or not hasattr(txn, "has_pid"):
        return False
    if not all(hasattr(producer, name) for name in ("_partition", "_metadata", "_serialize")):
        return False
    return getattr(txn, "transactional_id", True) is None and not acc._linger_time


async def direct_send(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes,
    headers: list[tuple[str, bytes]],
    partition: int | None,
) -> asyncio.Future[Any] | None:
    """Send one record in this task; None if the partition is busy (use `producer.send()`).

    `partition=None` picks one with the producer's partitioner (as `send()` does). Returns the
    record's future, done unless aiokafka's sender retries the batch.
    """
    internal: Any = producer
    acc = internal._message_accumulator
    sender = internal._sender
    txn = internal._txn_manager
    internal._serialize(None, value, headers)  # raises MessageSizeTooLargeError as send() does
    if partition is None:
        if not internal._metadata.partitions_for_topic(topic):
            return None  # metadata not known yet: `send()` waits for it
        partition = internal._partition(topic, None, None, value, None, value)
    tp = TopicPartition(topic, partition)
    leader = internal.client.cluster.leader_for_partition(tp)
    if (
        leader is None
        or leader < 0
        or tp in acc._batches
        or tp in sender._muted_partitions
        or acc._exception is not None
        or acc._closed
        or not txn.has_pid()
        or sender.sender_task is None
        or sender.sender_task.done()
    ):
        return None
    batch = MessageBatch(tp, acc.create_builder(), acc._batch_ttl, acc._linger_time)
    future: asyncio.Future[Any] | None = batch.append(None, value, None, headers=headers)
    if future is None:  # larger than a batch: aiokafka's path says why
        return None
    acc._batches[tp].append(batch)
    batch = acc._pop_batch(tp)  # the next sequence number, as the sender's drain would
    sender._muted_partitions.add(tp)
    try:
        await _OneBatchHandler(sender, {tp: batch}).do(leader)
    except BaseException:
        # Cancelled mid-request: the sender delivers the batch, with its sequence number
        # (the server answers a copy it already has as a duplicate, which counts as done).
        if not batch.future.done() and batch not in acc._batches.get(tp, ()):
            acc.reenqueue(batch)
        raise
    finally:
        sender._muted_partitions.discard(tp)
        if tp in acc._batches and not acc._waiter_future.done():
            acc._waiter_future.set_result(None)  # wake the sender for what waited meanwhile
    return future
