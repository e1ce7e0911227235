"""repid's fast paths touch only the connections repid opened, turn off with one switch, and fall
back to aiormq's public path per call on an unexpected error (logged once)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any
from uuid import uuid4

import aio_pika
import pytest
from aiormq.connection import FrameReceiver

from repid import Connection, Queue, Router, Worker
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from tests.conformance.specs.rabbitmq import DSN, PREFIX
from tests.conformance.support import job, running, wait_until

pytestmark = pytest.mark.broker("rabbitmq")


def _receiver_of(connection: Any) -> Any:
    """The `FrameReceiver` an aiormq connection reads with (found the way a user could: the
    local of its reader task), independent of repid's own helpers."""
    frame = connection._reader_task.get_coro().cr_frame
    receiver = frame.f_locals["frame_receiver"]
    assert type(receiver) is FrameReceiver
    return receiver


def _is_aiormqs(function: Any) -> bool:
    code = getattr(function, "__code__", None)
    return code is not None and code.co_filename.endswith("aiormq/connection.py")


def _aiormq_connection(broker: RabbitMessageBroker) -> Any:
    connection = broker._link.connection
    assert connection is not None
    assert connection.transport is not None
    return connection.transport.connection


@pytest.fixture
async def queue_name() -> AsyncIterator[str]:
    name = f"fp_{uuid4().hex[:10]}"
    yield name
    broker = RabbitMessageBroker(DSN, prefix=PREFIX, fast_path=False)
    await broker.connect()
    try:
        await broker.queue_delete(name)
    finally:
        await broker.disconnect()


async def _run_jobs(conn: Connection, name: str, total: int) -> tuple[list[int], Worker]:
    queue = Queue(name, _connection=conn)
    await queue.declare()
    router = Router()
    seen: list[int] = []

    @router.actor(queue=name)
    async def count(n: int) -> None:
        seen.append(n)

    for n in range(total):
        await job(conn, "count", queue, args={"n": n}).enqueue()
    return seen, Worker([router], handle_signals=[], tasks_limit=50, _connection=conn)


async def test_a_users_own_aio_pika_connection_keeps_aiormqs_reader(
    queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repid.brokers.rabbitmq import _frames

    served: list[Any] = []  # the receivers repid's reader ran for, one entry per call
    fast_get_frame = _frames.FrameReader.get_frame

    async def spy(self: _frames.FrameReader) -> Any:
        served.append(self.receiver)
        return await fast_get_frame(self)

    monkeypatch.setattr(_frames.FrameReader, "get_frame", spy)

    broker = RabbitMessageBroker(DSN, prefix=PREFIX, fast_path=True)
    conn = Connection(broker)
    await conn.connect()
    user = await aio_pika.connect_robust(DSN)
    user_queue_name = f"{PREFIX}user-{uuid4().hex[:10]}"
    try:
        seen, worker = await _run_jobs(conn, queue_name, 200)
        channel = await user.channel()
        user_queue = await channel.declare_queue(user_queue_name, auto_delete=True)
        got: list[bytes] = []
        async with running(worker):
            await wait_until(lambda: len(seen) == 200, "repid's jobs to run")
            for n in range(50):  # the user's traffic while repid's worker consumes
                await channel.default_exchange.publish(
                    aio_pika.Message(f"user-{n}".encode()), routing_key=user_queue_name
                )
            async with user_queue.iterator() as messages:
                async for message in messages:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 50:
                        break
        assert sorted(seen) == list(range(200))
        assert got == [f"user-{n}".encode() for n in range(50)]

        # aiormq's class is untouched, and the user's connection reads with its method...
        assert _is_aiormqs(FrameReceiver.get_frame)
        user_receiver = _receiver_of(user.transport.connection)  # type: ignore[union-attr]
        assert "get_frame" not in vars(user_receiver)
        assert _is_aiormqs(user_receiver.get_frame)
        assert all(receiver is not user_receiver for receiver in served)
        # ...while repid's connection read with repid's reader.
        repid_receiver = _receiver_of(_aiormq_connection(broker))
        assert "get_frame" in vars(repid_receiver)
        assert not _is_aiormqs(repid_receiver.get_frame)
        assert served
        assert all(receiver is repid_receiver for receiver in served)
    finally:
        await user.close()
        await conn.disconnect()
    assert "get_frame" not in vars(repid_receiver)  # given back on disconnect


async def test_with_fast_path_off_everything_takes_aiormqs_public_path(
    queue_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from repid.brokers.rabbitmq import _frames, _publisher, consumer

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a fast path ran with fast_path=False")

    monkeypatch.setattr(_frames.FrameReader, "__init__", never)
    monkeypatch.setattr(_publisher.PublishBatcher, "publish", never)
    monkeypatch.setattr(consumer, "deliver_inline", never)

    broker = RabbitMessageBroker(DSN, prefix=PREFIX, fast_path=False)
    assert broker.fast_path is False
    conn = Connection(broker)
    await conn.connect()
    try:
        seen, worker = await _run_jobs(conn, queue_name, 300)
        async with running(worker):
            await wait_until(lambda: len(seen) == 300, "every job to run")
            receiver = _receiver_of(_aiormq_connection(broker))
            assert "get_frame" not in vars(receiver)
            assert broker._link.inline_consumers == {}
        assert sorted(seen) == list(range(300))
    finally:
        await conn.disconnect()


def test_the_switch_and_its_environment_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPID_FAST_PATH", raising=False)
    assert RabbitMessageBroker(DSN).fast_path is True
    assert RabbitMessageBroker(DSN, fast_path=False).fast_path is False
    for off in ("0", "false", "OFF", "no"):
        monkeypatch.setenv("REPID_FAST_PATH", off)
        assert RabbitMessageBroker(DSN).fast_path is False
        assert RabbitMessageBroker(DSN, fast_path=True).fast_path is True  # explicit wins
    monkeypatch.setenv("REPID_FAST_PATH", "1")
    assert RabbitMessageBroker(DSN).fast_path is True


def test_other_library_versions_take_the_public_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from repid.brokers.rabbitmq import _compat

    monkeypatch.setitem(_compat.TESTED_VERSIONS, "aiormq", "0.0.1")
    assert RabbitMessageBroker(DSN, fast_path=True).fast_path is False


async def test_a_failing_publish_batch_falls_back_to_basic_publish_logged_once(
    queue_name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from repid.brokers.rabbitmq import _compat, _publisher

    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("marshalling broke")

    monkeypatch.setattr(_publisher, "header_frame", broken)
    monkeypatch.setattr(_compat, "_logged", set())
    broker = RabbitMessageBroker(DSN, prefix=PREFIX, fast_path=True)
    conn = Connection(broker)
    await conn.connect()
    try:
        with caplog.at_level(logging.WARNING, logger="repid.brokers.rabbitmq"):
            seen, worker = await _run_jobs(conn, queue_name, 20)
            counts = await broker.counts(queue_name)
        assert counts["ready"] == 20  # every publish arrived, confirmed, through the public path
        fallbacks = [r for r in caplog.records if "fast path" in r.getMessage()]
        assert len(fallbacks) == 1, [r.getMessage() for r in fallbacks]
        async with running(worker):
            await wait_until(lambda: len(seen) == 20, "every job to run")
    finally:
        await conn.disconnect()


async def test_the_frame_reader_falls_back_per_call_logged_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import pamqp.frame
    from pamqp import commands as spec

    from repid.brokers.rabbitmq import _compat, _frames

    calls = 0

    def broken(raw: bytes) -> Any:
        nonlocal calls
        calls += 1
        raise RuntimeError("parser broke")

    monkeypatch.setattr(_frames, "unmarshal", broken)
    monkeypatch.setattr(_compat, "_logged", set())
    reader = asyncio.StreamReader()
    receiver = FrameReceiver(reader)
    receiver.started = True
    _frames.FrameReader(receiver, {})
    frames = [spec.Basic.Ack(delivery_tag=n) for n in range(1, 4)]
    reader.feed_data(b"".join(pamqp.frame.marshal(frame, 1) for frame in frames))
    with caplog.at_level(logging.WARNING, logger="repid.brokers.rabbitmq"):
        got: list[Any] = [await asyncio.wait_for(receiver.get_frame(), 5) for _ in frames]
    assert calls == 3  # each call tried the fast path and took aiormq's code
    assert [(channel, frame.delivery_tag) for _, channel, frame in got] == [(1, 1), (1, 2), (1, 3)]
    assert len([r for r in caplog.records if "fast path" in r.getMessage()]) == 1


def test_the_tested_versions_are_the_ones_pinned_and_installed() -> None:
    import importlib.metadata
    import tomllib
    from pathlib import Path

    from repid.brokers.rabbitmq import _compat

    root = Path(__file__).resolve().parents[3]
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["rabbitmq"]
    for name, version in _compat.TESTED_VERSIONS.items():
        assert f"{name}=={version}" in extra
        assert importlib.metadata.version(name) == version
