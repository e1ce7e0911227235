"""The direct-send fast path falls back per call: an unexpected error before aiokafka holds the
batch sends it through aiokafka's public `send()`, one after leaves it to aiokafka's sender;
either way the message is stored once and the failure logged once. `fast_path=False` (or
`REPID_FAST_PATH=0`) uses only the public path, which stores the same records."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from uuid import uuid4

import pytest

from repid import Connection, Job, KafkaMessageBroker, MessageCategory, Queue
from repid.brokers.kafka import _compat
from repid.brokers.kafka._compat import DirectSender
from repid.brokers.kafka.reading import read_topic
from tests.conformance.specs import RUN_ID
from tests.conformance.specs.kafka import BOOTSTRAP

pytestmark = pytest.mark.broker("kafka")

PREFIX = f"repid-{RUN_ID}-kf-"
LOGGER = "repid.brokers.kafka"


async def _open(**options: Any) -> KafkaMessageBroker:
    broker = KafkaMessageBroker(BOOTSTRAP, topic_prefix=PREFIX, **options)
    await broker.connect()
    return broker


@pytest.fixture
async def broker() -> AsyncIterator[KafkaMessageBroker]:
    broker = await _open(fast_path=True)
    yield broker
    await broker.disconnect()


async def _queue(broker: KafkaMessageBroker) -> Queue:
    queue = Queue(f"kf_{uuid4().hex[:10]}", _connection=Connection(broker))
    await queue.declare()
    return queue


@pytest.fixture
async def queue(broker: KafkaMessageBroker) -> AsyncIterator[Queue]:
    q = await _queue(broker)
    yield q
    await q.delete()


def _enqueue(queue: Queue, n: int) -> Awaitable[Job]:
    return Job("work", queue=queue.name, args={"n": n}, _connection=queue.connection).enqueue()


def _count_sends(broker: KafkaMessageBroker, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count the calls of aiokafka's public `send()` on this broker's producer instance."""
    producer: Any = broker._publisher.producer
    calls = [0]
    original: Callable[..., Awaitable[Any]] = producer.send

    async def send(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(producer, "send", send)
    return calls


async def _stored(broker: KafkaMessageBroker, queue: Queue) -> Counter[int]:
    messages = await read_topic(broker, queue.name, MessageCategory.NORMAL)
    return Counter(json.loads(m.payload)["n"] for m in messages)


def _direct(broker: KafkaMessageBroker) -> DirectSender:
    direct: DirectSender | None = broker._publisher.direct
    assert direct is not None, "the fast path should be on for this producer"
    return direct


def _fast_path_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "fast path" in r.getMessage()
    ]


async def test_an_error_building_the_batch_sends_through_the_public_path_and_logs_once(
    broker: KafkaMessageBroker,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _enqueue(queue, 0)  # metadata known: later sends would take the fast path
    direct = _direct(broker)

    def broken_plan(*args: Any, **kwargs: Any) -> None:
        raise TypeError("MessageBatch.__init__() takes 4 positional arguments")  # a new aiokafka

    monkeypatch.setattr(direct, "plan", broken_plan)  # this producer's sender only
    calls = _count_sends(broker, monkeypatch)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for n in range(1, 6):
            await _enqueue(queue, n)

    assert calls[0] == 5, "every send took aiokafka's public send()"
    assert len(_fast_path_warnings(caplog)) == 1
    assert await _stored(broker, queue) == Counter(range(6))


async def test_an_error_after_the_sequence_number_leaves_the_batch_to_aiokafkas_sender(
    broker: KafkaMessageBroker,
    queue: Queue,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await _enqueue(queue, 0)
    direct = _direct(broker)

    async def broken_request(planned: Any) -> None:
        raise TypeError("SendProduceReqHandler.do() changed")  # before anything is written

    monkeypatch.setattr(direct, "request", broken_request)
    calls = _count_sends(broker, monkeypatch)
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        for n in range(1, 4):
            await _enqueue(queue, n)
    monkeypatch.undo()  # the fast path works again: sequence numbers still in order
    for n in range(4, 8):
        await _enqueue(queue, n)

    # The batches already had their sequence numbers: a public send() of a new batch would
    # have left a gap. aiokafka's sender delivered them instead.
    assert calls[0] == 0
    assert len(_fast_path_warnings(caplog)) == 1
    assert await _stored(broker, queue) == Counter(range(8)), "each stored exactly once"


async def test_an_error_after_the_response_does_not_send_the_message_again(
    broker: KafkaMessageBroker, queue: Queue, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _enqueue(queue, 0)
    direct = _direct(broker)
    request = direct.request

    async def fails_after_sending(planned: Any) -> None:
        await request(planned)
        raise RuntimeError("handling the response changed")

    monkeypatch.setattr(direct, "request", fails_after_sending)
    calls = _count_sends(broker, monkeypatch)
    for n in range(1, 4):
        await _enqueue(queue, n)

    assert calls[0] == 0
    assert await _stored(broker, queue) == Counter(range(4)), "each stored exactly once"


async def test_fast_path_off_uses_only_the_public_path_and_stores_the_same_records(
    broker: KafkaMessageBroker, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = await _open(fast_path=False)
    try:
        assert public._publisher.direct is None
        calls = _count_sends(public, monkeypatch)
        fast_queue, public_queue = await _queue(broker), await _queue(public)
        try:
            for n in range(10):
                await _enqueue(fast_queue, n)
                await _enqueue(public_queue, n)
            assert calls[0] == 10
            fast = await read_topic(broker, fast_queue.name, MessageCategory.NORMAL)
            slow = await read_topic(public, public_queue.name, MessageCategory.NORMAL)
            assert [(d.key.topic, d.payload, d.key.priority) for d in fast] == [
                (d.key.topic, d.payload, d.key.priority) for d in slow
            ]
            assert len(fast) == 10
        finally:
            await fast_queue.delete()
            await public_queue.delete()
    finally:
        await public.disconnect()


def test_the_environment_sets_the_default_and_the_keyword_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REPID_FAST_PATH", "0")
    assert KafkaMessageBroker(BOOTSTRAP).fast_path is False
    assert KafkaMessageBroker(BOOTSTRAP, fast_path=True).fast_path is True
    monkeypatch.setenv("REPID_FAST_PATH", "1")
    assert KafkaMessageBroker(BOOTSTRAP).fast_path is True
    assert KafkaMessageBroker(BOOTSTRAP, fast_path=False).fast_path is False
    monkeypatch.delenv("REPID_FAST_PATH")
    assert KafkaMessageBroker(BOOTSTRAP).fast_path is True


async def test_an_aiokafka_version_the_tests_did_not_run_keeps_the_public_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_compat, "TESTED_AIOKAFKA", ("0.0.0",))
    broker = await _open(fast_path=True)
    try:
        assert broker._publisher.direct is None
    finally:
        await broker.disconnect()
