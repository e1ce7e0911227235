"""What only the NATS broker does: the JetStream layout, bytes from other clients, NAK-delayed
messages, the server's size limit, state shared through key-value buckets, outages."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from uuid import uuid4

import nats
import pytest

from repid import (
    BrokerUnavailableError,
    Connection,
    Job,
    MessageCategory,
    MessageTooLargeError,
    PrioritiesT,
    Queue,
    Router,
    Worker,
)
from repid.brokers.nats import NatsBucketBroker, NatsMessageBroker
from repid.brokers.nats._names import safe, unsafe
from repid.data import ResultBucket
from repid.lifecycle import WorkerInfo
from tests.conformance.specs.nats import PREFIX, SERVERS
from tests.conformance.support import browse, running, wait_until

pytestmark = pytest.mark.broker("nats")


def _broker(**options: object) -> NatsMessageBroker:
    options.setdefault("prefix", PREFIX)
    options.setdefault("operation_timeout", 5.0)
    return NatsMessageBroker(SERVERS, **options)  # type: ignore[arg-type]


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    connection = Connection(
        _broker(),
        results_bucket_broker=NatsBucketBroker(SERVERS, prefix=PREFIX, use_result_bucket=True),
    )
    await connection.connect()
    yield connection
    await connection.disconnect()


@pytest.fixture
async def queue(conn: Connection) -> AsyncIterator[Queue]:
    q = Queue(f"nq_{uuid4().hex[:10]}", _connection=conn)
    await q.declare()
    yield q
    await q.delete()


def test_names_are_escaped_reversibly() -> None:
    for name in ("plain-name_1", "with.dot", "a b*c>", "üñí:code"):
        token = safe(name)
        assert all(c.isalnum() or c in "_-=" for c in token), token
        assert unsafe(token) == name


async def test_layout_on_the_server(conn: Connection, queue: Queue) -> None:
    broker: NatsMessageBroker = conn.message_broker  # type: ignore[assignment]
    names = broker.names(queue.name)
    js = broker.link.js
    info = await js.stream_info(names.stream)
    assert info.config.retention == "workqueue"
    assert info.config.subjects == [f"{names.stream}.*.*"]
    for priority, durable in enumerate(names.consumers):
        consumer = await js.consumer_info(names.stream, durable)
        assert consumer.config.filter_subject == f"{names.subjects[priority]}.*"
        assert consumer.config.ack_wait == broker.lease_duration
    dead = await js.stream_info(names.dead_stream)
    assert dead.config.retention == "limits"
    assert queue.name in await broker.queue_names()


async def test_raw_bytes_from_another_client_are_dead_lettered(
    conn: Connection, queue: Queue
) -> None:
    broker: NatsMessageBroker = conn.message_broker  # type: ignore[assignment]
    names = broker.names(queue.name)
    other = await nats.connect(SERVERS)
    try:
        await other.jetstream().publish(f"{names.subjects[1]}.foreign", b"\xffnot json")
    finally:
        await other.close()
    router = Router()

    @router.actor(queue=queue.name)
    async def never() -> None:
        raise AssertionError("undecodable bytes must not run an actor")

    worker = Worker([router], _connection=conn, handle_signals=[], messages_limit=1)
    await asyncio.wait_for(worker.run(), 10)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.delivery.raw == b"\xffnot json"
    info = dead.dead_letter
    assert info is not None
    assert info.reason == "decode_error"
    assert (await broker.counts(queue.name))["ready"] == 0


async def test_delayed_message_is_held_by_the_server_until_due(
    conn: Connection, queue: Queue
) -> None:
    broker: NatsMessageBroker = conn.message_broker  # type: ignore[assignment]
    for _ in range(2):  # two ready ones
        await Job("later", queue=queue.name, _connection=conn).enqueue()
    due_in = 1.5
    await Job(
        "delayed",
        queue=queue.name,
        _connection=conn,
        deferred_until=datetime.now(UTC) + timedelta(seconds=due_in),
    ).enqueue()
    started = time.monotonic()
    consumer = broker.get_consumer(queue.name)
    await consumer.start()
    try:
        first = await consumer.fetch(10, 0.5)
        assert sorted(d.key.topic for d in first) == ["later", "later"]
        for d in first:
            assert await broker.ack(d)
        counts = await broker.counts(queue.name)
        assert (counts["delayed"], counts["ready"]) == (1, 0), counts
        (delayed,) = await consumer.fetch(1, 5.0)
        assert time.monotonic() - started >= due_in * 0.95
        assert delayed.key.topic == "delayed"
        assert not delayed.redelivered
        assert await broker.ack(delayed)
    finally:
        await consumer.finish()


async def test_priorities_across_the_three_consumers(conn: Connection, queue: Queue) -> None:
    for priority in (PrioritiesT.LOW, PrioritiesT.MEDIUM, PrioritiesT.HIGH, PrioritiesT.LOW):
        await Job("p", queue=queue.name, priority=priority, _connection=conn).enqueue()
    consumer = conn.message_broker.get_consumer(queue.name, max_unacked_messages=1)
    await consumer.start()
    order = []
    try:
        for _ in range(4):
            delivery = await asyncio.wait_for(consumer.consume(), 5)
            order.append(delivery.key.priority)
            assert await conn.message_broker.ack(delivery)
    finally:
        await consumer.finish()
    assert order == [0, 1, 2, 2]


async def test_message_larger_than_max_payload_is_refused_at_enqueue(
    conn: Connection, queue: Queue
) -> None:
    broker: NatsMessageBroker = conn.message_broker  # type: ignore[assignment]
    limit = broker.capabilities.max_message_size
    assert limit is not None
    assert limit <= broker.link.client.max_payload
    with pytest.raises(MessageTooLargeError):
        await Job("big", queue=queue.name, args={"blob": "x" * limit}, _connection=conn).enqueue()
    assert (await broker.counts(queue.name))["ready"] == 0


async def test_unique_ids_and_cancellations_are_shared_by_broker_objects(
    conn: Connection, queue: Queue
) -> None:
    other = Connection(_broker())
    await other.connect()
    try:
        await Job("u", queue=queue.name, id_="only-once", _connection=conn).enqueue()
        await Job("u", queue=queue.name, id_="only-once", _connection=other).enqueue()
        assert (await conn.message_broker.counts(queue.name))["ready"] == 1

        consumer = conn.message_broker.get_consumer(queue.name)
        await consumer.start()
        try:
            (delivery,) = await consumer.fetch(1, 2.0)
            assert await other.message_broker.cancel(queue.name, "only-once") == "requested"
            await wait_until(
                lambda: "only-once" in conn.message_broker._flags, "the flag to reach the worker"
            )
            assert await conn.message_broker.cancelled_ids(["only-once"]) == {"only-once"}
            assert await conn.message_broker.ack(delivery)
            await wait_until(
                lambda: "only-once" not in other.message_broker._flags, "the flag to be forgotten"
            )
        finally:
            await consumer.finish()
        await Job("u", queue=queue.name, id_="waiting", _connection=conn).enqueue()
        assert await other.message_broker.cancel(queue.name, "waiting") == "dequeued"
        assert await other.message_broker.cancel(queue.name, "waiting") is None
    finally:
        await other.disconnect()


async def test_worker_registry_is_shared(conn: Connection) -> None:
    other = _broker()
    await other.connect()
    try:
        now = time.time()
        info = WorkerInfo(f"h:1:{uuid4().hex}", "h", 1, ("a",), 4, 0, now, now)
        await conn.message_broker.heartbeat(info)
        assert info in await other.live_workers()
        await other.unregister_worker(info.id)
        assert info not in await conn.message_broker.live_workers()
    finally:
        await other.disconnect()


async def test_bucket_ttl_without_per_key_expiry() -> None:
    buckets = NatsBucketBroker(SERVERS, prefix=PREFIX, use_result_bucket=True)
    await buckets.connect()
    try:
        bucket = ResultBucket(data="1", ttl=timedelta(seconds=0.3))
        await buckets.store_bucket("short", bucket)
        assert await buckets.get_bucket("short") is not None
        deadline = time.monotonic() + 5
        while await buckets.get_bucket("short") is not None:
            assert time.monotonic() < deadline, "an expired bucket was still returned"
            await asyncio.sleep(0.05)
        await buckets.store_bucket("kept", ResultBucket(data="2"))
        assert await buckets.wait_bucket("kept", 1.0) is not None
    finally:
        await buckets.disconnect()


async def test_unreachable_server_is_a_clear_error_with_the_password_masked() -> None:
    port = _free_port()
    broker = NatsMessageBroker(f"nats://user:s3cret@127.0.0.1:{port}", connect_timeout=0.5)
    with pytest.raises(BrokerUnavailableError, match="unreachable") as caught:
        await broker.connect()
    assert "s3cret" not in str(caught.value)
    assert "s3cret" not in repr(broker)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _nats_server(port: int, store: str) -> subprocess.Popen[bytes]:
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    return subprocess.Popen(
        [binary, "-js", "-a", "127.0.0.1", "-p", str(port), "-sd", store],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _port_open(port: int) -> bool:
    with contextlib.closing(socket.socket()) as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


async def test_server_restart_loses_no_message_and_enqueue_resumes() -> None:
    port = _free_port()
    with tempfile.TemporaryDirectory() as store:
        server = _nats_server(port, store)
        try:
            await wait_until(lambda: _port_open(port), "the private server", 15)
            conn = Connection(
                NatsMessageBroker(
                    f"nats://127.0.0.1:{port}", operation_timeout=2.0, reconnect_backoff=0.1
                )
            )
            await conn.connect()
            queue = Queue("outage", _connection=conn)
            await queue.declare()
            await Job("x", queue="outage", args={"n": 1}, _connection=conn).enqueue()
            server.send_signal(signal.SIGTERM)
            server.wait(10)
            started = time.monotonic()
            with pytest.raises(BrokerUnavailableError, match="unreachable"):
                await Job("x", queue="outage", _connection=conn).enqueue()
            assert time.monotonic() - started < 10
            server = _nats_server(port, store)
            await wait_until(lambda: _port_open(port), "the server to come back", 15)
            deadline = time.monotonic() + 15
            while True:
                try:
                    await Job("x", queue="outage", args={"n": 2}, _connection=conn).enqueue()
                    break
                except BrokerUnavailableError:
                    assert time.monotonic() < deadline, "enqueue never resumed"
            ran: list[int] = []
            router = Router()

            @router.actor(queue="outage")
            async def x(n: int) -> None:
                ran.append(n)

            async with running(Worker([router], _connection=conn, handle_signals=[])):
                await wait_until(lambda: len(ran) == 2, "both messages to run", 10)
            assert sorted(ran) == [1, 2]
            await conn.disconnect()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(10)
