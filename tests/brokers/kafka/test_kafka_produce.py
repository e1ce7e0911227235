"""The direct produce path (`repid.brokers.kafka._compat.DirectSender`): a lone send skips
aiokafka's sender task; busy partitions, cancelled sends and lingering producers keep aiokafka's
guarantees; its hand-built produce requests and responses are byte for byte aiokafka's."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from io import BytesIO
from typing import Any
from uuid import uuid4

import pytest
from aiokafka import TopicPartition
from aiokafka.protocol import produce
from aiokafka.protocol.produce import ProduceRequest
from hypothesis import given, settings
from hypothesis import strategies as st

from repid import Connection, Job, KafkaMessageBroker, MessageCategory, Queue
from repid.brokers.kafka._compat import OneBatchProduceRequest, _OneBatchStruct
from repid.brokers.kafka._wire import decode_produce_response
from repid.brokers.kafka.reading import read_topic
from tests.conformance.specs import RUN_ID
from tests.conformance.specs.kafka import BOOTSTRAP

pytestmark = pytest.mark.broker("kafka")

PREFIX = f"repid-{RUN_ID}-kp-"


@pytest.fixture
async def broker() -> AsyncIterator[KafkaMessageBroker]:
    broker = KafkaMessageBroker(BOOTSTRAP, topic_prefix=PREFIX, partitions=3)
    await broker.connect()
    yield broker
    await broker.disconnect()


@pytest.fixture
async def queue(broker: KafkaMessageBroker) -> AsyncIterator[Queue]:
    q = Queue(f"kp_{uuid4().hex[:10]}", _connection=Connection(broker))
    await q.declare()
    yield q
    await q.delete()


def _count_sends(producer: Any, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of aiokafka's own `send()` (the path through its sender task)."""
    calls = [0]
    original: Callable[..., Awaitable[Any]] = producer.send

    async def send(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(producer, "send", send)
    return calls


async def _stored_numbers(broker: KafkaMessageBroker, queue: Queue) -> Counter[int]:
    messages = await read_topic(broker, queue.name, MessageCategory.NORMAL)
    return Counter(json.loads(m.payload)["n"] for m in messages)


def _enqueue(queue: Queue, n: int) -> Awaitable[Job]:
    return Job("work", queue=queue.name, args={"n": n}, _connection=queue.connection).enqueue()


async def test_lone_sends_skip_the_sender_task_and_busy_partitions_do_not(
    broker: KafkaMessageBroker, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert broker._publisher.direct, "aiokafka's internals changed: the direct path is off"
    calls = _count_sends(broker._publisher.producer, monkeypatch)
    decoded = [0]
    decode = _OneBatchStruct.decode

    def counting_decode(self: _OneBatchStruct, read_buffer: BytesIO) -> Any:
        decoded[0] += 1
        return decode(self, read_buffer)

    monkeypatch.setattr(_OneBatchStruct, "decode", counting_decode)
    for n in range(30):
        await _enqueue(queue, n)
    assert decoded[0] >= 29, "the server's produce version should be one encoded by hand"
    # The first one waits in aiokafka's send() for the new topic's metadata.
    assert calls[0] <= 1, "sequential enqueues should take the direct path"

    # Concurrent enqueues share partitions: the first per partition goes direct, the rest
    # wait in aiokafka's accumulator behind it (muted) and follow with the next numbers.
    await asyncio.gather(*(_enqueue(queue, n) for n in range(30, 530)))
    assert calls[0] > 0
    for n in range(530, 540):
        await _enqueue(queue, n)

    stored = await _stored_numbers(broker, queue)
    assert stored == Counter(range(540)), "every message stored exactly once"


async def test_a_send_cancelled_mid_request_is_delivered_by_the_sender(
    broker: KafkaMessageBroker, queue: Queue
) -> None:
    producer: Any = broker._publisher.producer
    muted: set[Any] = producer._sender._muted_partitions
    for n in range(5):
        await _enqueue(queue, n)

    sending = asyncio.ensure_future(_enqueue(queue, 5))
    deadline = time.monotonic() + 10
    while not muted:  # the direct send has its sequence number and is in its request
        assert not sending.done(), "the send finished before it could be cancelled"
        assert time.monotonic() < deadline, "the send never reached its request"
        await asyncio.sleep(0)
    sending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sending
    assert not muted, "the partition is released for the sender"

    # Later sends keep the sequence numbers in order (no OutOfOrderSequenceNumber) ...
    for n in range(6, 26):
        await _enqueue(queue, n)
    await producer.flush()
    # ... and the cancelled one was delivered by aiokafka's sender, once.
    assert await _stored_numbers(broker, queue) == Counter(range(26))


async def test_a_lingering_producer_keeps_aiokafka_batching() -> None:
    broker = KafkaMessageBroker(BOOTSTRAP, topic_prefix=PREFIX, linger_ms=5)
    await broker.connect()
    try:
        assert broker._publisher.direct is None
    finally:
        await broker.disconnect()


_names = st.text(st.characters(codec="utf-8"), max_size=40)
_i32 = st.integers(0, 2**31 - 1)


@settings(max_examples=200, deadline=None)
@given(
    version=st.integers(3, 8),
    acks=st.sampled_from([-1, 0, 1]),
    timeout=_i32,
    topic=_names.filter(bool),
    partition=_i32,
    data=st.binary(max_size=300),
    correlation_id=_i32,
    client_id=_names,
)
def test_one_batch_request_is_the_bytes_aiokafka_writes(
    version: int,
    acks: int,
    timeout: int,
    topic: str,
    partition: int,
    data: bytes,
    correlation_id: int,
    client_id: str,
) -> None:
    versions = {0: (0, version)}
    ours = OneBatchProduceRequest(acks, timeout, TopicPartition(topic, partition), data)
    theirs = ProduceRequest(None, acks, timeout, [(topic, [(partition, data)])])
    mine, reference = ours.prepare(versions), theirs.prepare(versions)
    assert mine.API_VERSION == reference.API_VERSION
    assert (
        mine.build_request_header(correlation_id, client_id).encode() + mine.encode()
        == reference.build_request_header(correlation_id, client_id).encode() + reference.encode()
    )


def test_versions_without_a_hand_encoding_use_aiokafkas() -> None:
    request = OneBatchProduceRequest(-1, 1000, TopicPartition("t", 0), b"x")
    assert type(request.prepare({0: (0, 2)})).__name__ == "ProduceRequest_v2"


_partition_replies = st.tuples(
    _i32,
    st.integers(-1, 120),
    st.integers(-1, 2**63 - 1),
    st.integers(-1, 2**63 - 1),
    st.integers(-1, 2**63 - 1),
    st.lists(st.tuples(_i32, st.none() | _names), max_size=3),
    st.none() | _names,
)


@settings(max_examples=200, deadline=None)
@given(
    version=st.integers(3, 8),
    topics=st.lists(st.tuples(_names, st.lists(_partition_replies, max_size=3)), max_size=3),
    throttle=_i32,
)
def test_produce_response_decodes_as_aiokafka_decodes_it(
    version: int, topics: list[tuple[str, list[tuple[Any, ...]]]], throttle: int
) -> None:
    width = 4 if version < 5 else 5 if version < 8 else 7
    shaped = [(topic, [reply[:width] for reply in replies]) for topic, replies in topics]
    response_class = getattr(produce, f"ProduceResponse_v{version}")
    raw = response_class(shaped, throttle).encode()
    reference = response_class.decode(BytesIO(raw))
    ours = decode_produce_response(version, raw)
    assert ours.API_VERSION == reference.API_VERSION
    assert _plain(ours.topics) == _plain(reference.topics)
    assert ours.throttle_time_ms == reference.throttle_time_ms


def _plain(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value
