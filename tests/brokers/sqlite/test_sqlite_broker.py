"""SQLite-specific guarantees: processes sharing one file, crashes, wake-ups, locking, options."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from uuid import uuid4

import pytest

from repid import (
    BrokerUnavailableError,
    ConfigurationError,
    Connection,
    Job,
    MessageTooLargeError,
    Queue,
    QueueNotDeclaredError,
    SqliteMessageBroker,
)
from repid.brokers.sqlite._db import database_path
from repid.cli.target import CLIError, connection_from_url
from tests.conformance.support import browse, wait_until

ROOT = Path(__file__).resolve().parents[3]
APP = [sys.executable, "-m", "tests.brokers.sqlite.sqlite_app"]


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/repid.db"


@pytest.fixture
async def conn(url: str) -> AsyncIterator[Connection]:
    connection = Connection(SqliteMessageBroker(url))
    await connection.connect()
    try:
        yield connection
    finally:
        await connection.disconnect()


@pytest.fixture
async def queue(conn: Connection) -> Queue:
    declared = Queue(f"q_{uuid4().hex[:8]}", _connection=conn)
    await declared.declare()
    return declared


def _ledger(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [
        line.split() for line in path.read_text().splitlines() if line.endswith(tuple("0123456789"))
    ]


def _spawn(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen([*APP, *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# -- processes sharing one file ---------------------------------------------------------------


async def test_producer_process_and_worker_process_share_the_file(
    url: str, queue: Queue, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    worker = _spawn("work", url, queue.name, str(ledger), "5", log=tmp_path / "worker.log")
    producer = await asyncio.to_thread(
        subprocess.run,
        [*APP, "produce", url, queue.name, "50"],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    try:
        assert producer.returncode == 0, producer.stderr.decode()
        assert len(producer.stdout.split()) == 50

        def ended() -> set[str]:
            return {row[1] for row in _ledger(ledger) if row[0] == "end"}

        await wait_until(
            lambda: len(ended()) == 50, "the worker process to run every job", timeout=30
        )
    finally:
        _stop(worker)
    assert ended() == {f"p{n}" for n in range(50)}
    assert await browse(queue) == []


async def test_a_sigkilled_worker_s_job_runs_again_after_its_lease(
    url: str, conn: Connection, queue: Queue, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    await Job(
        "slow", queue=queue.name, args={"tag": "long", "sleep": 60.0}, _connection=conn
    ).enqueue()
    first = _spawn("work", url, queue.name, str(ledger), "1", log=tmp_path / "w1.log")
    try:
        await wait_until(
            lambda: any(row[:2] == ["start", "long"] for row in _ledger(ledger)),
            "the job to start",
            timeout=30,
        )
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        killed_at = time.monotonic()
    finally:
        _stop(first)
    second = _spawn("work", url, queue.name, str(ledger), "1", "0.1", log=tmp_path / "w2.log")
    try:
        await wait_until(
            lambda: any(row[:2] == ["end", "long"] for row in _ledger(ledger)),
            "the job to run again in the second worker",
            timeout=30,
        )
    finally:
        _stop(second)
    starts = [row for row in _ledger(ledger) if row[:2] == ["start", "long"]]
    assert [int(row[2]) for row in starts] == [first.pid, second.pid]
    assert time.monotonic() - killed_at >= 1.0 - 0.2  # not before the lease ran out
    assert await browse(queue) == []


async def test_every_enqueue_that_returned_survives_a_sigkilled_producer(
    url: str, conn: Connection, queue: Queue, tmp_path: Path
) -> None:
    out = tmp_path / "ids"
    producer = _spawn("produce", url, queue.name, "100000", log=out)
    try:
        await wait_until(
            lambda: out.read_bytes().count(b"\n") >= 200, "200 enqueues to return", timeout=60
        )
    finally:
        producer.send_signal(signal.SIGKILL)
        producer.wait(timeout=10)
    returned = out.read_text().split("\n")[:-1]  # a line cut short by the kill is not counted
    stored = {message.key.id_ for message in await browse(queue)}
    assert len(returned) >= 200
    assert set(returned) <= stored, "an enqueue that returned is not in the file"
    assert len(stored) - len(returned) <= 1  # at most the enqueue in flight at the kill


async def test_messages_survive_a_reopen_of_the_file(
    url: str, queue: Queue, conn: Connection
) -> None:
    await Job("x", queue=queue.name, args={"n": 1}, _connection=conn).enqueue()
    await conn.disconnect()
    again = Connection(SqliteMessageBroker(url))
    await again.connect()
    try:
        messages = await browse(Queue(queue.name, _connection=again))
        assert [m.raw_payload for m in messages] == ['{"n":1}']
    finally:
        await again.disconnect()
        await conn.connect()


# -- wake-ups ---------------------------------------------------------------------------------


async def test_a_producer_in_the_same_process_wakes_the_consumer_without_polling(
    url: str, queue: Queue
) -> None:
    # poll_interval of an hour: only the in-process wake-up can deliver in time.
    consumer_side = SqliteMessageBroker(url, poll_interval=3600.0)
    producer = Connection(SqliteMessageBroker(url))
    await consumer_side.connect()
    await producer.connect()
    consumer = consumer_side.get_consumer(queue.name, max_unacked_messages=1)
    await consumer.start()
    try:
        waiting = asyncio.ensure_future(consumer.consume())
        # Idle for 1.3 s, the consumer has backed off to a 1.28 s wait (started at ~1.28 s): a
        # poll would find the message ~1.2 s after the enqueue, the wake-up finds it at once.
        await asyncio.sleep(1.3)
        assert not waiting.done()
        await Job("x", queue=queue.name, _connection=producer).enqueue()
        enqueued = time.monotonic()
        delivery = await asyncio.wait_for(waiting, 5.0)
        latency = time.monotonic() - enqueued
        await consumer_side.ack(delivery)
    finally:
        await consumer.finish()
        await producer.disconnect()
        await consumer_side.disconnect()
    assert latency < 0.25, latency


async def test_another_process_s_enqueue_is_seen_within_the_poll_interval(
    url: str, conn: Connection, queue: Queue
) -> None:
    broker = conn.message_broker
    assert isinstance(broker, SqliteMessageBroker)
    consumer = broker.get_consumer(queue.name, max_unacked_messages=1)
    await consumer.start()
    try:
        waiting = asyncio.ensure_future(consumer.consume())
        await asyncio.sleep(0.3)  # idle long enough to be at the longest poll interval
        producer = await asyncio.create_subprocess_exec(
            *APP, "produce", url, queue.name, "1", cwd=ROOT, stdout=subprocess.PIPE
        )
        assert producer.stdout is not None
        await producer.stdout.readline()  # the enqueue returned
        returned = time.monotonic()
        delivery = await asyncio.wait_for(waiting, 5.0)
        latency = time.monotonic() - returned
        await broker.ack(delivery)
        await producer.wait()
    finally:
        await consumer.finish()
    assert latency < broker.poll_interval + 0.25, latency


# -- transactions and locking ---------------------------------------------------------------


async def test_enqueues_of_one_loop_step_share_one_commit(conn: Connection, queue: Queue) -> None:
    broker = conn.message_broker
    assert isinstance(broker, SqliteMessageBroker)
    before = broker.db.commits
    await asyncio.gather(
        *(Job("x", queue=queue.name, args={"n": n}, _connection=conn).enqueue() for n in range(500))
    )
    assert broker.db.commits - before <= 2
    assert (await broker.counts(queue.name))["ready"] == 500


def _hold_write_lock(path: str, seconds: float, held: threading.Event) -> None:
    other = sqlite3.connect(path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        other.execute("COMMIT")
    finally:
        other.close()


async def test_a_locked_file_is_waited_for_then_reported_unavailable(tmp_path: Path) -> None:
    path = str(tmp_path / "locked.db")
    broker = SqliteMessageBroker(path, busy_timeout=0.05, operation_timeout=0.3)
    await broker.connect()
    try:
        await broker.queue_declare("q")
        held = threading.Event()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 0.2, held))
        holder.start()
        await asyncio.to_thread(held.wait)
        await broker.queue_declare("waited")  # the lock is released within the timeout
        holder.join()
        held.clear()
        holder = threading.Thread(target=_hold_write_lock, args=(path, 1.5, held))
        holder.start()
        await asyncio.to_thread(held.wait)
        with pytest.raises(BrokerUnavailableError, match="locked"):
            await broker.queue_declare("never")
        holder.join()
        assert await broker.queue_names() == ["q", "waited"]
    finally:
        await broker.disconnect()


# -- options and errors -----------------------------------------------------------------------


def test_dsn_forms(tmp_path: Path) -> None:
    assert database_path(f"sqlite:///{tmp_path}/a.db") == f"{tmp_path}/a.db"
    assert database_path(tmp_path / "b.db") == f"{tmp_path}/b.db"
    assert database_path("sqlite:///rel.db") == str(Path("rel.db").absolute())
    for bad in ("sqlite://host/x.db", "redis://x", "sqlite:///:memory:", ""):
        with pytest.raises(ConfigurationError):
            database_path(bad)
    with pytest.raises(ConfigurationError, match="synchronous"):
        SqliteMessageBroker(tmp_path / "c.db", synchronous="SOMETIMES")


async def test_an_unopenable_file_says_the_broker_is_unreachable(tmp_path: Path) -> None:
    broker = SqliteMessageBroker(tmp_path / "missing-dir" / "x.db")
    with pytest.raises(BrokerUnavailableError, match="unreachable"):
        await broker.connect()


async def test_enqueue_errors(conn: Connection, queue: Queue, tmp_path: Path) -> None:
    with pytest.raises(QueueNotDeclaredError):
        await Job("x", queue="nowhere", _connection=conn).enqueue()
    small = Connection(SqliteMessageBroker(tmp_path / "repid.db", max_message_size=200))
    await small.connect()
    try:
        with pytest.raises(MessageTooLargeError):
            await Job("x", queue=queue.name, args={"s": "x" * 500}, _connection=small).enqueue()
    finally:
        await small.disconnect()
    assert await browse(queue) == []


def test_cli_urls(tmp_path: Path) -> None:
    connection = connection_from_url(f"sqlite:///{tmp_path}/cli.db")
    assert isinstance(connection.message_broker, SqliteMessageBroker)
    assert connection.results_bucket_broker is not None
    with pytest.raises(CLIError, match="own file"):
        connection_from_url(f"sqlite:///{tmp_path}/cli.db", "redis://127.0.0.1/0")
    with pytest.raises(CLIError, match="no host"):
        connection_from_url("sqlite://somehost/cli.db")


async def test_synchronous_defaults_to_normal_and_full_is_kept(tmp_path: Path) -> None:
    """WAL with synchronous=NORMAL by default (no fsync per commit); FULL when asked for. The
    statements run on the connection's own thread, never on the event loop's."""
    loop_thread = threading.get_ident()
    for name, expected in (("n.db", 1), ("f.db", 2)):
        kwargs = {} if expected == 1 else {"synchronous": "FULL"}
        broker = SqliteMessageBroker(tmp_path / name, **kwargs)  # type: ignore[arg-type]
        await broker.connect()
        try:

            def pragmas(conn: sqlite3.Connection) -> tuple[int, str, int]:
                (level,) = conn.execute("PRAGMA synchronous").fetchone()
                (mode,) = conn.execute("PRAGMA journal_mode").fetchone()
                return level, mode, threading.get_ident()

            level, mode, thread = await broker.db.run(pragmas)
        finally:
            await broker.disconnect()
        assert (level, mode) == (expected, "wal")
        assert thread != loop_thread
        assert not broker.db.is_open
