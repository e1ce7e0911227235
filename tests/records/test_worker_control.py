"""Worker control from Python (issue 17): `status()` and `is_running`, waiting for an
unreachable broker at start-up, `Router.include_module`, and `Job.enqueue_sync` from a thread."""

from __future__ import annotations

import asyncio
import logging
import shutil
import socket
import sys
import time
from pathlib import Path

import pytest

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    Queue,
    RedisMessageBroker,
    Router,
    Worker,
)
from repid.errors import BrokerUnavailableError, ConfigurationError


def memory() -> Connection:
    return Connection(
        InMemoryMessageBroker(), results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True)
    )


async def until(predicate, what: str, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_status_reports_state_in_flight_and_counters() -> None:
    conn = memory()
    router = Router()
    started = asyncio.Event()
    release = asyncio.Event()

    @router.actor
    async def slow() -> None:
        started.set()
        await release.wait()

    @router.actor
    async def quick() -> None:
        return None

    async with conn:
        await Queue(_connection=conn).declare()
        worker = Worker([router], handle_signals=[], _connection=conn)
        assert not worker.is_running
        assert worker.status().state == "idle"
        await Job("quick", _connection=conn).enqueue()
        await Job("slow", _connection=conn).enqueue()
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(started.wait(), 10)
        status = worker.status()
        assert worker.is_running
        assert status.state == "running"
        assert status.in_flight == {"slow": 1}
        assert status.worker_id is not None
        worker.stop()
        await until(lambda: worker.status().state == "stopping", "the stopping state")
        release.set()
        runner = await asyncio.wait_for(task, 10)
        final = worker.status()
        assert not worker.is_running
        assert (final.state, final.in_flight) == ("idle", {})
        assert (final.processed, final.succeeded, final.failed) == (2, 2, 0)
        assert final.worker_id == runner.worker_id


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_startup_timeout_zero_raises_at_once_and_a_short_one_after_it() -> None:
    dsn = f"redis://127.0.0.1:{free_port()}/0"
    at_once = Worker(
        [Router()],
        handle_signals=[],
        startup_timeout=0,
        _connection=Connection(RedisMessageBroker(dsn, connect_timeout=1.0)),
    )
    with pytest.raises(BrokerUnavailableError):
        await at_once.run()
    patient = Worker(
        [Router()],
        handle_signals=[],
        startup_timeout=0.6,
        _connection=Connection(RedisMessageBroker(dsn, connect_timeout=1.0)),
    )
    began = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await patient.run()
    assert time.monotonic() - began >= 0.6


async def test_run_waits_for_a_broker_that_starts_later(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    port = free_port()
    dsn = f"redis://127.0.0.1:{port}/0"
    conn = Connection(RedisMessageBroker(dsn, connect_timeout=1.0))
    router = Router()
    ran = asyncio.Event()

    @router.actor
    async def hello() -> None:
        ran.set()

    worker = Worker([router], handle_signals=[], startup_timeout=30, _connection=conn)
    caplog.set_level(logging.WARNING, "repid.worker")
    task = asyncio.create_task(worker.run())
    server: asyncio.subprocess.Process | None = None
    try:
        await until(
            lambda: "the broker is unreachable" in caplog.text, "a start-up retry", timeout=15
        )
        assert not task.done()
        binary = shutil.which("redis-server")
        assert binary is not None, "the private Redis of this test needs redis-server"
        server = await asyncio.create_subprocess_exec(
            binary,
            *("--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
            stdout=asyncio.subprocess.DEVNULL,
        )
        await until(lambda: conn.is_open, "the worker connects", timeout=20)
        producer = Connection(RedisMessageBroker(dsn))
        async with producer:
            await Job("hello", _connection=producer).enqueue()
            await asyncio.wait_for(ran.wait(), 15)
    finally:
        worker.stop()
        await asyncio.wait_for(task, 15)
        await conn.disconnect()
        if server is not None:
            server.terminate()
            await asyncio.wait_for(server.wait(), 10)


def test_include_module_finds_the_routers_of_a_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "shop_actors"
    (package / "billing").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "orders.py").write_text(
        "from repid import Router\nrouter = Router()\n\n"
        "@router.actor\nasync def place(n: int) -> None: ...\n"
    )
    (package / "billing" / "__init__.py").write_text(
        "from repid import Router\nbilling = Router()\n\n"
        "@billing.actor\nasync def charge(n: int) -> None: ...\n"
        "@billing.actor\nasync def refund(n: int) -> None: ...\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    shallow = Router()
    assert shallow.include_module("shop_actors") == 0
    everything = Router()
    assert everything.include_module("shop_actors", recursive=True) == 3
    assert sorted(everything.actors) == ["charge", "place", "refund"]
    one = Router()
    assert one.include_module(sys.modules["shop_actors.orders"]) == 1
    for name in [m for m in sys.modules if m.startswith("shop_actors")]:
        monkeypatch.delitem(sys.modules, name)


async def test_enqueue_sync_from_a_thread() -> None:
    conn = memory()
    router = Router()
    seen: list[int] = []

    @router.actor
    async def record(n: int) -> None:
        seen.append(n)

    with pytest.raises(RuntimeError, match="running"):
        Job("record", args={"n": 0}, _connection=conn).enqueue_sync()
    async with conn:
        await Queue(_connection=conn).declare()

        def from_plain_code() -> list[str | None]:
            jobs = [Job("record", args={"n": n}, _connection=conn) for n in (1, 2, 3)]
            return [job.enqueue_sync(timeout=10).last_id for job in jobs]

        ids = await asyncio.to_thread(from_plain_code)
        assert all(ids)
        with pytest.raises(RuntimeError, match="await enqueue"):
            Job("record", args={"n": 4}, _connection=conn).enqueue_sync()
        worker = Worker([router], handle_signals=[], messages_limit=3, _connection=conn)
        await asyncio.wait_for(worker.run(), 10)
    assert sorted(seen) == [1, 2, 3]


@pytest.mark.parametrize(("tasks_limit", "prefetch"), [(1, 4), (4, 1), (2, None)])
async def test_prefetch_is_set_apart_from_the_concurrency(
    tasks_limit: int, prefetch: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker asks its broker's consumer for `prefetch` messages ahead (the in-memory
    broker hands them out on demand, so the request is what can be checked here); at most
    `tasks_limit` actors run at once."""
    conn = memory()
    router = Router()
    release = asyncio.Event()
    running: list[int] = []

    @router.actor
    async def block(n: int) -> None:
        running.append(n)
        await release.wait()

    broker = conn.raw_message_broker
    asked: list[int | None] = []
    real = broker.get_consumer

    def get_consumer(queue: str, topics: object, max_unacked: int | None = None) -> object:
        asked.append(max_unacked)
        return real(queue, topics, max_unacked)  # type: ignore[arg-type]

    monkeypatch.setattr(broker, "get_consumer", get_consumer)
    async with conn:
        await Queue(_connection=conn).declare()
        for n in range(6):
            await Job("block", args={"n": n}, _connection=conn).enqueue()
        worker = Worker(
            [router],
            handle_signals=[],
            tasks_limit=tasks_limit,
            prefetch=prefetch,
            _connection=conn,
        )
        task = asyncio.create_task(worker.run())
        await until(lambda: len(running) == tasks_limit, "the actors start")
        assert asked == [max(tasks_limit, prefetch or 0)], "never below tasks_limit"
        assert worker.status().in_flight == {"block": tasks_limit}, "tasks_limit caps the runs"
        worker.stop()
        release.set()
        await asyncio.wait_for(task, 10)
    with pytest.raises(ConfigurationError, match="prefetch"):
        Worker(prefetch=0)


async def test_run_waits_when_the_broker_goes_away_between_connect_and_declare() -> None:
    """The chaos restart of NATS caught this: connected, then the server went down before the
    queues were declared, and `run()` raised at once instead of waiting `startup_timeout`."""

    class Flaky(InMemoryMessageBroker):
        failures = 2

        async def queue_declare(self, queue_name: str) -> None:
            if Flaky.failures:
                Flaky.failures -= 1
                raise BrokerUnavailableError("the server went away")
            await super().queue_declare(queue_name)

    conn = Connection(Flaky())
    await conn.connect()
    worker = Worker(handle_signals=[], messages_limit=1, startup_timeout=10.0, _connection=conn)
    ran = asyncio.Event()

    @worker.actor
    async def after_it() -> None:
        ran.set()

    await InMemoryMessageBroker.queue_declare(conn.raw_message_broker, "default")
    await Job("after_it", _connection=conn).enqueue()
    await asyncio.wait_for(worker.run(), 10.0)
    assert ran.is_set()
    assert Flaky.failures == 0
