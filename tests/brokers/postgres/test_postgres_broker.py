"""What is specific to the PostgreSQL broker: enqueue in the caller's transaction, the schema
and its upgrade, LISTEN/NOTIFY wake-ups and the poll fallback, errors that mask passwords."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from uuid import uuid4

import asyncpg
import pytest

from repid import Connection, Queue
from repid.brokers.postgres import PostgresMessageBroker
from repid.brokers.postgres._schema import SCHEMA_VERSION, Names, current_version, upgrade
from repid.cli import main
from repid.data import Parameters, PrioritiesT, ResultBucket, RoutingKey
from repid.errors import BrokerUnavailableError, ConfigurationError, QueueNotDeclaredError
from tests.brokers.postgres.conftest import DSN
from tests.conformance.support import job, make_worker, router_for, running, wait


def _key(queue: str, id_: str | None = None) -> RoutingKey:
    return RoutingKey(id_ or uuid4().hex, "work", queue, PrioritiesT.MEDIUM)


async def _idle(consumer: object) -> None:
    """Wait until the consumer found nothing to claim and sleeps (waits for a change)."""
    deadline = time.monotonic() + 5
    while not consumer._changed:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, "the consumer never went idle"
        await asyncio.sleep(0.01)


async def _queue(conn: Connection) -> Queue:
    queue = Queue(f"q_{uuid4().hex[:8]}", _connection=conn)
    await queue.declare()
    return queue


# -- enqueue inside the caller's transaction ----------------------------------------------------


async def test_a_job_enqueued_in_a_committed_transaction_runs_and_a_rolled_back_one_never_does(
    connect, user_conn
):
    conn = await connect()
    broker = conn.message_broker
    queue = await _queue(conn)
    table = f"orders_{uuid4().hex[:8]}"
    await user_conn.execute(f"CREATE TABLE {table} (id int PRIMARY KEY)")
    try:
        router = router_for(queue)
        ran: list[int] = []
        committed_ran = asyncio.Event()

        @router.actor
        async def ship(order: int) -> None:
            ran.append(order)
            if order == 1:
                committed_ran.set()

        async def failed_order() -> None:
            async with user_conn.transaction():
                await user_conn.execute(f"INSERT INTO {table} VALUES (2)")
                with broker.transaction(user_conn):
                    await job(conn, "ship", queue, args={"order": 2}).enqueue()
                assert (await broker.counts(queue.name))["ready"] == 0  # not visible yet
                raise RuntimeError("payment failed")

        async with running(make_worker(conn, router)):
            with pytest.raises(RuntimeError, match="payment failed"):
                await failed_order()
            async with user_conn.transaction():
                await user_conn.execute(f"INSERT INTO {table} VALUES (1)")
                async with broker.transaction(user_conn):
                    await job(conn, "ship", queue, args={"order": 1}).enqueue()
            await wait(committed_ran, "the job of the committed transaction")
        assert ran == [1]
        assert await user_conn.fetchval(f"SELECT count(*) FROM {table}") == 1
        counts = await broker.counts(queue.name)
        assert counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
    finally:
        await user_conn.execute(f"DROP TABLE {table}")


async def test_args_bucket_of_a_rolled_back_transaction_is_gone_too(connect, user_conn):
    conn = await connect()
    bucket_broker = conn.args_bucket_broker
    queue = await _queue(conn)
    transaction = user_conn.transaction()
    await transaction.start()
    with conn.message_broker.transaction(user_conn):
        await job(conn, "work", queue, args={"n": 1}, use_args_bucketer=True).enqueue()
        await bucket_broker.store_bucket("kept-only-if-committed", bucket_broker.BUCKET_CLASS("x"))
    await transaction.rollback()
    assert await bucket_broker.get_bucket("kept-only-if-committed") is None
    assert (await conn.message_broker.counts(queue.name))["ready"] == 0


async def test_enqueue_outside_the_block_uses_the_broker_pool(connect, user_conn):
    conn = await connect()
    queue = await _queue(conn)
    async with user_conn.transaction():
        with conn.message_broker.transaction(user_conn):
            pass
        await job(conn, "work", queue).enqueue()  # after the block: its own commit
        assert (await conn.message_broker.counts(queue.name))["ready"] == 1


# -- wake-ups -------------------------------------------------------------------------------------


async def test_an_idle_consumer_is_woken_by_notify_not_by_polling(connect):
    conn = await connect(poll_interval=30.0)
    broker = conn.message_broker
    queue = await _queue(conn)
    await asyncio.wait_for(broker._listener.listening.wait(), 5)
    consumer = broker.get_consumer(queue.name, max_unacked_messages=10)
    await consumer.start()
    try:
        taking = asyncio.ensure_future(consumer.consume())
        await _idle(consumer)  # it found nothing and sleeps (30 s poll)
        assert not taking.done()
        started = time.monotonic()
        await broker.enqueue(_key(queue.name), "{}", Parameters())
        delivery = await asyncio.wait_for(taking, 5)
        assert time.monotonic() - started < 2.0
        assert await broker.ack(delivery)
    finally:
        await consumer.finish()


async def test_without_notifications_polling_still_delivers(connect):
    conn = await connect(poll_interval=0.2)
    broker = conn.message_broker
    queue = await _queue(conn)
    await broker._listener.stop()  # as if the LISTEN connection were gone for good
    consumer = broker.get_consumer(queue.name, max_unacked_messages=10)
    await consumer.start()
    try:
        taking = asyncio.ensure_future(consumer.consume())
        await _idle(consumer)
        await broker.enqueue(_key(queue.name), "{}", Parameters())
        delivery = await asyncio.wait_for(taking, 5)
        assert await broker.ack(delivery)
    finally:
        await consumer.finish()


async def test_an_expired_lease_is_swept_back_and_the_old_holder_is_stale(connect):
    conn = await connect(lease_duration=0.5)
    broker = conn.message_broker
    queue = await _queue(conn)
    await broker.enqueue(_key(queue.name, "orphan"), "{}", Parameters())
    first = broker.get_consumer(queue.name, max_unacked_messages=1)
    second = broker.get_consumer(queue.name, max_unacked_messages=1)
    await first.start()
    await second.start()
    try:
        (held,) = await first.fetch(1, 5.0)
        assert not held.redelivered
        (again,) = await second.fetch(1, 5.0)  # waits for the lease to run out
        assert again.key.id_ == "orphan"
        assert again.redelivered
        assert not await broker.ack(held)
        assert await broker.ack(again)
    finally:
        await first.finish()
        await second.finish()


# -- schema ---------------------------------------------------------------------------------------


async def test_schema_upgrade_is_idempotent_and_safe_concurrently(schema):
    names = Names(schema, "app_")
    conns = [await asyncpg.connect(DSN) for _ in range(3)]
    try:
        applied = await asyncio.gather(*(upgrade(c, names) for c in conns))
        assert sorted(applied) == [[], [], list(range(1, SCHEMA_VERSION + 1))]
        assert await upgrade(conns[0], names) == []
        assert await current_version(conns[0], names) == SCHEMA_VERSION
        tables = await conns[0].fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = $1 ORDER BY 1", schema
        )
        assert [t[0] for t in tables] == [
            "app_archive",
            "app_buckets",
            "app_cancels",
            "app_dead_letters",
            "app_limits",
            "app_messages",
            "app_queues",
            "app_schema_version",
            "app_workers",
        ]
    finally:
        for c in conns:
            await c.close()


async def test_without_auto_upgrade_a_missing_schema_says_to_run_repid_db_upgrade(schema):
    broker = PostgresMessageBroker(DSN, schema=schema, auto_upgrade=False)
    with pytest.raises(ConfigurationError, match="repid db upgrade"):
        await broker.connect()
    await broker.disconnect()
    assert await asyncio.to_thread(main, ["db", "upgrade", "--dsn", DSN, "--schema", schema]) == 0
    await broker.connect()
    await broker.disconnect()


def test_repid_db_status_and_upgrade(schema, capsys):
    assert main(["db", "status", "--dsn", DSN, "--schema", schema]) == 0
    assert "database: 0" in capsys.readouterr().out
    assert main(["db", "upgrade", "--dsn", DSN, "--schema", schema]) == 0
    assert "applied migration(s) 1, 2, 3" in capsys.readouterr().out
    assert main(["db", "upgrade", "--dsn", DSN, "--schema", schema]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["db", "upgrade", "--dsn", "redis://x"]) == 1
    assert "needs --dsn postgresql://" in capsys.readouterr().err


@pytest.mark.parametrize("schema_name", ["Bad", "1x", "a-b", 'x"; drop'])
def test_schema_and_prefix_names_are_checked(schema_name):
    with pytest.raises(ConfigurationError, match="schema"):
        PostgresMessageBroker(DSN, schema=schema_name)
    if schema_name != "1x":  # a prefix may start with a digit (it follows nothing)
        with pytest.raises(ConfigurationError, match="prefix"):
            PostgresMessageBroker(DSN, prefix=schema_name)


# -- errors ---------------------------------------------------------------------------------------

_SECRET_DSN = "postgresql://postgres:hunter2secret@127.0.0.1:1/test"


async def test_an_unreachable_server_is_a_clear_error_without_the_password(caplog):
    broker = PostgresMessageBroker(_SECRET_DSN, connect_timeout=1.0, operation_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="unreachable") as info:
        await broker.connect()
    assert time.monotonic() - started < 5.0
    assert "hunter2secret" not in str(info.value)
    assert "postgres:***@127.0.0.1:1" in str(info.value)
    assert "hunter2secret" not in repr(broker)
    assert "hunter2secret" not in caplog.text
    await broker.disconnect()


def test_repid_db_against_an_unreachable_server_masks_the_password(capsys):
    assert main(["db", "upgrade", "--dsn", _SECRET_DSN]) == 1
    err = capsys.readouterr().err
    assert "unreachable" in err
    assert "hunter2secret" not in err


@pytest.mark.parametrize(("synchronous", "expected"), [(False, "off"), (True, "on")])
async def test_settlements_commit_without_waiting_for_the_flush_unless_asked(
    connect, synchronous, expected
):
    conn = await connect(synchronous_settlements=synchronous)
    broker = conn.message_broker

    async def setting(db: asyncpg.Connection) -> str:
        value: str = await db.fetchval("SHOW synchronous_commit")
        return value

    assert await broker.settling.run("show", setting) == expected
    assert await broker.link.run("show", setting) == "on"  # enqueues always wait for the flush


async def test_an_actor_limit_holds_across_brokers_as_across_processes(connect):
    first, second = await connect(), await connect()  # two brokers: as two worker processes
    queue = await _queue(first)
    running_now = 0
    most = 0
    done = asyncio.Event()
    finished = 0

    def router_with_limit():
        router = router_for(queue)

        @router.actor(max_concurrency=1)
        async def limited(n: int) -> None:
            nonlocal running_now, most, finished
            running_now += 1
            most = max(most, running_now)
            await asyncio.sleep(0.05)  # holding the only slot while the other worker waits
            running_now -= 1
            finished += 1
            if finished == 6:
                done.set()

        return router

    for n in range(6):
        await job(first, "limited", queue, args={"n": n}).enqueue()
    async with (
        running(make_worker(first, router_with_limit())),
        running(make_worker(second, router_with_limit())),
    ):
        await wait(done, "six limited jobs")
    assert most == 1


async def test_gathered_enqueues_share_a_statement_and_an_undeclared_queue_fails_alone(connect):
    conn = await connect()
    broker = conn.message_broker
    queue = await _queue(conn)
    results = await asyncio.gather(
        *(broker.enqueue(_key(queue.name), "{}", Parameters()) for _ in range(20)),
        broker.enqueue(_key("never_declared"), "{}", Parameters()),
        return_exceptions=True,
    )
    assert all(result is None for result in results[:20])
    assert isinstance(results[20], QueueNotDeclaredError)
    assert (await broker.counts(queue.name))["ready"] == 20


async def test_the_listen_connection_is_reopened_after_it_is_killed(connect, user_conn):
    conn = await connect(poll_interval=30.0)
    broker = conn.message_broker
    queue = await _queue(conn)
    listener = broker._listener
    await asyncio.wait_for(listener.listening.wait(), 5)
    old_pid = listener._conn.get_server_pid()
    await user_conn.execute("SELECT pg_terminate_backend($1)", old_pid)
    deadline = time.monotonic() + 10
    while listener._conn is None or listener._conn.get_server_pid() == old_pid:
        assert time.monotonic() < deadline, "the LISTEN connection was not reopened"
        await asyncio.sleep(0.02)
    await asyncio.wait_for(listener.listening.wait(), 5)
    consumer = broker.get_consumer(queue.name, max_unacked_messages=10)
    await consumer.start()
    try:
        taking = asyncio.ensure_future(consumer.consume())
        await _idle(consumer)
        await broker.enqueue(_key(queue.name), "{}", Parameters())
        assert await broker.ack(await asyncio.wait_for(taking, 5))  # woken by NOTIFY, not the poll
    finally:
        await consumer.finish()


async def test_buckets_expire_with_their_ttl(connect):
    conn = await connect()
    buckets = conn.results_bucket_broker
    short = ResultBucket("1", True, 0, 0, ttl=timedelta(seconds=0.2))
    kept = ResultBucket("2", True, 0, 0, ttl=None)
    await buckets.store_bucket("short", short)
    await buckets.store_bucket("kept", kept)
    assert (await buckets.get_bucket("short")).data == "1"
    deadline = time.monotonic() + 5
    while await buckets.get_bucket("short") is not None:  # gone once its 0.2 s are over
        assert time.monotonic() < deadline, "the bucket never expired"
        await asyncio.sleep(0.02)
    assert (await buckets.get_bucket("kept")).data == "2"
    await buckets.delete_bucket("kept")
    assert await buckets.get_bucket("kept") is None


@pytest.mark.parametrize("retention", [None, timedelta(hours=1)])
async def test_acknowledged_messages_are_archived_only_with_a_retention(
    connect, user_conn, schema, retention
):
    conn = await connect(retention=retention)
    broker = conn.message_broker
    queue = await _queue(conn)
    await broker.enqueue(_key(queue.name, "done-job"), "{}", Parameters())
    consumer = broker.get_consumer(queue.name, max_unacked_messages=1)
    await consumer.start()
    try:
        (delivery,) = await consumer.fetch(1, 5.0)
        assert await broker.ack(delivery)
    finally:
        await consumer.finish()
    archived = f'SELECT job_id FROM "{schema}".archive WHERE queue = $1'
    rows = await user_conn.fetch(archived, queue.name)
    assert [r[0] for r in rows] == ([] if retention is None else ["done-job"])
    assert (await broker.counts(queue.name))["ready"] == 0
    await broker.sweep(time.time() + 2 * 3600)  # two hours later: past the retention
    assert await user_conn.fetch(archived, queue.name) == []
