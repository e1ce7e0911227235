"""What only RabbitMQ does: crashes and connection loss lose nothing, priorities, delay queues."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from repid import (
    BrokerUnavailableError,
    CancelOutcome,
    Connection,
    Job,
    JobNotFoundError,
    MessageCategory,
    PrioritiesT,
    Queue,
    Router,
    Worker,
)
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from repid.brokers.redis.broker import RedisBucketBroker
from tests.conformance.specs.rabbitmq import BUCKET_PREFIX, DSN, PREFIX
from tests.conformance.specs.redis import DSN as REDIS_DSN
from tests.conformance.support import browse, running, wait, wait_until

pytestmark = pytest.mark.broker("rabbitmq")

HERE = Path(__file__).parent


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    connection = Connection(RabbitMessageBroker(DSN, prefix=PREFIX, timeout=5.0))
    await connection.connect()
    yield connection
    await connection.disconnect()


@pytest.fixture
async def queue(conn: Connection) -> AsyncIterator[Queue]:
    q = Queue(f"rq_{uuid4().hex[:10]}", _connection=conn)
    await q.declare()
    yield q
    await q.delete()


def _job(conn: Connection, queue: Queue, name: str, **options: object) -> Job:
    return Job(name, queue=queue.name, _connection=conn, **options)  # type: ignore[arg-type]


async def test_priorities_end_to_end(conn: Connection, queue: Queue) -> None:
    router = Router()
    order: list[str] = []

    @router.actor(queue=queue.name)
    async def record(tag: str) -> None:
        order.append(tag)

    plan = [PrioritiesT.LOW, PrioritiesT.MEDIUM, PrioritiesT.HIGH] * 10
    for i, priority in enumerate(plan):
        await _job(conn, queue, "record", priority=priority, args={"tag": priority.name}).enqueue()
        assert i < len(plan)
    worker = Worker([router], tasks_limit=1, messages_limit=len(plan), handle_signals=[],
                    _connection=conn)  # fmt: skip
    await asyncio.wait_for(worker.run(), 10)
    assert order == ["HIGH"] * 10 + ["MEDIUM"] * 10 + ["LOW"] * 10


async def test_deferred_jobs_never_run_early_and_delays_do_not_block_each_other(
    conn: Connection, queue: Queue
) -> None:
    router = Router()
    started: dict[str, float] = {}
    both = asyncio.Event()

    @router.actor(queue=queue.name)
    async def later(tag: str) -> None:
        started[tag] = time.time()
        if len(started) == 2:
            both.set()

    now = datetime.now(tz=UTC)
    due = {"long": now + timedelta(seconds=2.3), "short": now + timedelta(seconds=0.7)}
    # The long delay is enqueued first: a single TTL queue would hold the short one behind it.
    await _job(conn, queue, "later", args={"tag": "long"}, deferred_until=due["long"]).enqueue()
    await _job(conn, queue, "later", args={"tag": "short"}, deferred_until=due["short"]).enqueue()
    far = now + timedelta(hours=2)
    await _job(conn, queue, "later", args={"tag": "far"}, deferred_until=far).enqueue()
    assert len(await browse(queue, MessageCategory.DELAYED)) == 3
    async with running(Worker([router], handle_signals=[], _connection=conn)):
        await wait(both, "both deferred jobs", timeout=6)
    for tag in ("short", "long"):
        early = due[tag].timestamp() - started[tag]
        assert early <= 0, f"{tag} ran {early:.3f}s early"
        assert -early < 1.0, f"{tag} ran {-early:.3f}s late"
    assert started["short"] < started["long"]
    assert [m.key.topic for m in await browse(queue, MessageCategory.DELAYED)] == ["later"]


async def _close_connections_named(ctl: str, name: str) -> int:
    """Have the server close every connection whose client calls itself `name`; how many."""
    lister = await asyncio.create_subprocess_exec(
        ctl,
        "list_connections",
        "pid",
        "client_properties",
        "-q",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    listing, errors = await asyncio.wait_for(lister.communicate(), 30)
    assert lister.returncode == 0, errors
    marker = f'{{"connection_name","{name}"}}'
    rows = [line.split("\t") for line in listing.decode().splitlines()[1:]]
    pids = [row[0] for row in rows if len(row) == 2 and marker in row[1]]
    for pid in pids:
        closer = await asyncio.create_subprocess_exec(
            ctl,
            "close_connection",
            pid,
            "repid test: connection loss",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, errors = await asyncio.wait_for(closer.communicate(), 30)
        assert closer.returncode == 0, errors
    return len(pids)


async def test_connections_closed_by_the_server_lose_nothing(queue: Queue) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None or os.geteuid() != 0:
        pytest.skip("needs rabbitmqctl as root to close connections")
    # Only this test's connection is closed (it names itself): other users of the server
    # are left alone.
    name = f"repid-test-{uuid4().hex[:8]}"
    conn = Connection(RabbitMessageBroker(f"{DSN}?name={name}", prefix=PREFIX, timeout=5.0))
    await conn.connect()
    router = Router()
    done: set[int] = set()
    total = 200

    @router.actor(queue=queue.name)
    async def work(n: int) -> None:
        await asyncio.sleep(0.01)
        done.add(n)

    try:
        for n in range(total // 2):
            await _job(conn, queue, "work", args={"n": n}).enqueue()
        async with running(Worker([router], tasks_limit=10, handle_signals=[], _connection=conn)):
            await wait_until(lambda: len(done) >= 20, "some jobs to run")
            assert await _close_connections_named(ctl, name) >= 1
            # The producer side reconnects too: these enqueues wait for it.
            for n in range(total // 2, total):
                await _job(conn, queue, "work", args={"n": n}).enqueue()
            await wait_until(lambda: len(done) == total, "every job after the reconnection", 20)
    finally:
        await conn.disconnect()
    assert done == set(range(total))
    assert await browse(queue) == []


async def test_worker_killed_mid_batch_loses_nothing(
    conn: Connection, queue: Queue, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    total = 150
    for n in range(total):
        await _job(conn, queue, "record", args={"n": n}).enqueue()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "worker_app.py"),
        DSN,
        PREFIX,
        queue.name,
        str(log),
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[2])},
    )
    try:
        deadline = time.monotonic() + 20
        while not log.exists() or len(log.read_text().split()) < 30:
            assert proc.returncode is None, "the worker process exited"
            assert time.monotonic() < deadline, "the worker process ran nothing"
            await asyncio.sleep(0.02)
    finally:
        proc.kill()  # SIGKILL: no graceful shutdown, unacked deliveries stay with RabbitMQ
        await asyncio.wait_for(proc.wait(), 10)
    ran_before = {int(line) for line in log.read_text().split()}
    assert len(ran_before) < total, "the worker finished before it was killed"

    router = Router()
    ran_after: set[int] = set()

    @router.actor(queue=queue.name)
    async def record(n: int) -> None:
        ran_after.add(n)

    async with running(Worker([router], handle_signals=[], _connection=conn)):
        await wait_until(lambda: ran_before | ran_after == set(range(total)), "every job", 20)
    assert await browse(queue) == []
    assert await browse(queue, MessageCategory.DEAD) == []


async def test_results_in_redis(queue: Queue) -> None:
    results = RedisBucketBroker(REDIS_DSN, use_result_bucket=True, prefix=BUCKET_PREFIX)
    conn = Connection(RabbitMessageBroker(DSN, prefix=PREFIX), results_bucket_broker=results)
    await conn.connect()
    router = Router()

    @router.actor(queue=queue.name)
    async def add(a: int, b: int) -> int:
        return a + b

    try:
        async with running(Worker([router], handle_signals=[], _connection=conn)):
            job = _job(conn, queue, "add", args={"a": 2, "b": 40}, result_ttl=timedelta(minutes=1))
            assert await job.enqueue_and_wait(10) == 42
    finally:
        await conn.disconnect()


async def test_unreachable_server_is_a_repid_error() -> None:
    broker = RabbitMessageBroker("amqp://guest:guest@127.0.0.1:1/", timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await broker.connect()
    assert time.monotonic() - started < 5


async def test_unsettled_delivery_is_held_until_its_channel_closes(
    conn: Connection, queue: Queue
) -> None:
    """RabbitMQ has no leases (lease_renewal=False): a delivery stays with its consumer however
    long its actor runs, and comes back (redelivered) only when that consumer's channel closes."""
    broker = conn.message_broker
    await _job(conn, queue, "orphan", args={"n": 1}).enqueue()
    holder = broker.get_consumer(queue.name, max_unacked_messages=10)
    await holder.start()
    (taken,) = await holder.fetch(1, 2.0)
    assert not taken.redelivered

    other = broker.get_consumer(queue.name, max_unacked_messages=10)
    await other.start()
    try:
        assert await other.fetch(1, 1.0) == [], "handed out twice while its consumer lives"
        await holder.finish()  # the channel closes, as when a worker process dies
        (again,) = await other.fetch(1, 5.0)
        assert again.key.id_ == taken.key.id_
        assert again.redelivered
        # Settlements through the dead channel are stale: logged, False, the copy untouched.
        assert await broker.ack(taken) is False
        assert await broker.reject(taken) is False
        assert await broker.requeue(taken) is False
        assert await broker.nack(taken) is False
        assert await broker.ack(again) is True
    finally:
        await other.finish()
    assert await browse(queue) == []
    assert await browse(queue, MessageCategory.DEAD) == []


class _Proxy:
    """A TCP proxy to RabbitMQ that the test can take down (all connections) and bring back."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server: asyncio.Server | None = None
        self.port = 0
        self.links: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for writer in list(self.links):
            writer.transport.abort()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.links |= {writer, up_writer}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self.links -= {writer, up_writer}


async def test_enqueue_raises_when_rabbitmq_stays_away_and_works_once_it_is_back(
    queue: Queue,
) -> None:
    from urllib.parse import urlsplit

    target = urlsplit(DSN)
    proxy = _Proxy(target.hostname or "127.0.0.1", target.port or 5672)
    await proxy.start()
    via_proxy = target._replace(
        netloc=f"{target.username}:{target.password}@127.0.0.1:{proxy.port}"
    )
    broker = RabbitMessageBroker(via_proxy.geturl(), prefix=PREFIX, timeout=1.0,
                                 reconnect_interval=0.2)  # fmt: skip
    conn = Connection(broker)
    await conn.connect()
    try:
        await _job(conn, queue, "x", args={"n": 1}).enqueue()
        await proxy.stop()
        started = time.monotonic()
        with pytest.raises(BrokerUnavailableError):
            await _job(conn, queue, "x", args={"n": 2}).enqueue()
        assert time.monotonic() - started < 4.0, "enqueue() waited far past its timeout"

        await proxy.start()  # RabbitMQ is reachable again: the connection comes back by itself
        deadline = time.monotonic() + 10
        while True:
            try:
                await _job(conn, queue, "x", args={"n": 3}).enqueue()
                break
            except BrokerUnavailableError:
                assert time.monotonic() < deadline, "the broker never reconnected"
        payloads = sorted(m.raw_payload for m in await browse(queue))
        assert payloads == ['{"n":1}', '{"n":3}']
    finally:
        await conn.disconnect()
        await proxy.stop()


async def test_unique_ids_are_per_process_and_never_block_for_longer_than_the_window(
    queue: Queue,
) -> None:
    """shared_state=False: the enqueuing process remembers unique ids for `unique_window`
    seconds (a worker elsewhere may have run the job meanwhile), then accepts the id again."""
    window = 0.3
    producer = Connection(RabbitMessageBroker(DSN, prefix=PREFIX, unique_window=window))
    other = Connection(RabbitMessageBroker(DSN, prefix=PREFIX))
    await producer.connect()
    await other.connect()
    try:
        await _job(producer, queue, "x", id_="nightly", args={"n": 1}).enqueue()
        await _job(producer, queue, "x", id_="nightly", args={"n": 2}).enqueue()
        await _job(other, queue, "x", id_="nightly", args={"n": 3}).enqueue()  # another process
        await asyncio.sleep(window)  # the window itself is what is tested
        await _job(producer, queue, "x", id_="nightly", args={"n": 4}).enqueue()
        payloads = sorted(m.raw_payload for m in await browse(queue))
        assert payloads == ['{"n":1}', '{"n":3}', '{"n":4}']
    finally:
        await producer.disconnect()
        await other.disconnect()


async def test_counts_read_each_part_of_the_queue(conn: Connection, queue: Queue) -> None:
    broker = conn.message_broker
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    await _job(conn, queue, "ready", args={"n": 1}).enqueue()
    await _job(conn, queue, "ready", args={"n": 2}).enqueue()
    await _job(conn, queue, "later", deferred_until=later).enqueue()
    await _job(conn, queue, "doomed").enqueue()
    consumer = broker.get_consumer(queue.name)
    await consumer.start()
    try:
        taken = await consumer.fetch(3, 2.0)
        for delivery in taken:
            if delivery.key.topic == "doomed":
                await broker.nack(delivery)
        assert await broker.counts(queue.name) == {
            "ready": 0,
            "delayed": 1,
            "in_flight": 2,
            "dead": 1,
        }
    finally:
        await consumer.finish()
    assert await broker.counts(queue.name) == {"ready": 2, "delayed": 1, "in_flight": 0, "dead": 1}
    assert queue.name in broker.queue_names()


async def test_cancel_reaches_a_job_running_in_another_process(
    conn: Connection, queue: Queue, tmp_path: Path
) -> None:
    log = tmp_path / "runs.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(HERE / "worker_app.py"),
        DSN,
        PREFIX,
        queue.name,
        str(log),
        stdout=asyncio.subprocess.DEVNULL,
        env={**os.environ, "PYTHONPATH": str(HERE.parents[2])},
    )
    try:
        endless = await _job(conn, queue, "endless", id_=f"endless-{uuid4().hex[:6]}").enqueue()

        def logged() -> list[str]:
            return log.read_text().split() if log.exists() else []

        await wait_until(lambda: "started" in logged(), "the job to start in the worker", 20)
        # This process did enqueue it, but a worker elsewhere runs it: it must be asked.
        assert await endless.cancel() is CancelOutcome.REQUESTED
        await wait_until(lambda: "cancelled" in logged(), "the remote actor to be cancelled")
        with pytest.raises(JobNotFoundError):
            await _job(conn, queue, "endless", id_="nobody-runs-this").cancel()
    finally:
        proc.kill()
        await asyncio.wait_for(proc.wait(), 10)


async def test_fast_queues_publish_transient_messages_without_waiting(queue: Queue) -> None:
    broker = RabbitMessageBroker(DSN, prefix=PREFIX, fast_queues={queue.name})
    conn = Connection(broker)
    await conn.connect()
    router = Router()
    seen: list[int] = []

    @router.actor(queue=queue.name)
    async def count(n: int) -> None:
        seen.append(n)

    try:
        for n in range(300):  # more than one buffered batch, never yielding in between
            await _job(conn, queue, "count", args={"n": n}).enqueue()
        await broker._link.batchers["fast"].drain()
        channel = await broker._new_channel(confirms=False)
        try:
            message = await channel.basic_get(PREFIX + queue.name, no_ack=False)
            assert message.header.properties.delivery_mode == 1  # transient
        finally:
            await channel.close()  # the message goes back
        async with running(Worker([router], handle_signals=[], _connection=conn)):
            await wait_until(lambda: len(seen) == 300, "every fast message to run")
        assert sorted(seen) == list(range(300))
    finally:
        await conn.disconnect()
