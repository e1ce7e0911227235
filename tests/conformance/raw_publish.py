"""Raw bytes published straight into a broker of the suite with its client library.

Not through repid's `Job` or broker: the bytes arrive as another producer's (or a corrupted)
message would. One function per broker, chosen by the suite's broker name.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from uuid import uuid4

import aio_pika
import asyncpg
import nats
import redis.asyncio
from aiokafka import AIOKafkaProducer

from repid import Connection, PrioritiesT
from repid.brokers.sqlite import _db as sqlite_db
from tests.conformance.specs import kafka, rabbitmq
from tests.conformance.specs import nats as nats_spec
from tests.conformance.specs import postgres as postgres_spec
from tests.conformance.specs import redis as redis_spec

RawPublisher = Callable[[Connection, str, list[tuple[bytes, int]]], Awaitable[None]]
"""`(connection, queue name, [(body, priority 0-2), ...])`: put each body on the queue."""


async def _memory(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    broker = conn.message_broker
    for body, priority in bodies:
        broker.inject_raw(queue, body, PrioritiesT(priority))


async def _redis(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    streams = conn.message_broker.keys(queue)  # one stream per priority, first
    client = redis.asyncio.Redis.from_url(redis_spec.DSN)
    try:
        for body, priority in bodies:
            await client.xadd(streams[priority], {b"m": body})
    finally:
        await client.aclose()


async def _redis_client(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    """Through the broker's own redis-py client (a Redis Cluster one for `redis_cluster`)."""
    streams = conn.message_broker.keys(queue)
    client = conn.message_broker.link.client
    for body, priority in bodies:
        await client.xadd(streams[priority], {b"m": body})


async def _rabbitmq(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    connection = await aio_pika.connect(rabbitmq.DSN)
    try:
        channel = await connection.channel(publisher_confirms=True)
        for body, priority in bodies:
            message = aio_pika.Message(
                body,
                priority=2 - priority,  # AMQP: higher is more urgent; repid's HIGH is 0
                delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
            )
            sources = conn.message_broker._sources(queue)  # quorum: one queue per priority
            # On quorum queues a producer puts a message in the queue of its priority: the one
            # its envelope names when it has one. (A decodable envelope in the queue of another
            # priority is forwarded by the consumer; see the note on issue 23.)
            target = sources[_envelope_priority(body, priority)] if len(sources) > 1 else sources[0]
            await channel.default_exchange.publish(message, routing_key=target)
    finally:
        await connection.close()


def _envelope_priority(body: bytes, default: int) -> int:
    try:
        priority = json.loads(body)["k"][3]
    except Exception:
        return default
    return priority if priority in (0, 1, 2) and type(priority) is int else default


async def _kafka(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka.BOOTSTRAP, max_request_size=conn.message_broker.max_message_size * 2
    )
    await producer.start()
    try:
        for body, _priority in bodies:
            await producer.send_and_wait(conn.message_broker.topic(queue), body)
    finally:
        await producer.stop()


async def _sqlite(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    # Another program writing rows into the shared file, as the broker's own enqueue would.
    path = conn.message_broker.db.path
    db = sqlite3.connect(path, timeout=30)
    try:
        with db:
            for n, (body, priority) in enumerate(bodies):
                db.execute(
                    "INSERT INTO repid_messages (queue, id, topic, priority, state, at, ord, "
                    "envelope) VALUES (?, ?, '', ?, 0, 0, ?, ?)",
                    (queue, f"raw-{uuid4().hex}", priority, time.time_ns() + n, body),
                )
    finally:
        db.close()
    # Without this a worker in another process finds the rows at its next poll.
    sqlite_db.notify(path, {queue})


async def _postgres(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    # Rows written by another program (a trigger, a SQL script), as the broker's enqueue would.
    broker = conn.message_broker
    db = await asyncpg.connect(postgres_spec.DSN, timeout=10)
    try:
        insert = broker.names.sql(
            "INSERT INTO {messages} (queue, job_id, topic, priority, envelope, due_at) "
            "VALUES ($1, $2, '', $3, $4, 0)"
        )
        async with db.transaction():
            for body, priority in bodies:
                await db.execute(insert, queue, f"raw-{uuid4().hex}", priority, body)
            await db.execute("SELECT pg_notify($1, $2)", broker.names.channel, queue)
    finally:
        await db.close()


async def _nats(conn: Connection, queue: str, bodies: list[tuple[bytes, int]]) -> None:
    names = conn.message_broker.names(queue)
    client = await nats.connect(nats_spec.SERVERS)
    try:
        js = client.jetstream()
        for body, priority in bodies:
            await js.publish(names.subject(priority, f"raw-{uuid4().hex}"), body)
    finally:
        await client.close()


PUBLISHERS: dict[str, RawPublisher] = {
    "kafka": _kafka,
    "memory": _memory,
    "nats": _nats,
    "postgres": _postgres,
    "rabbitmq": _rabbitmq,
    "rabbitmq_quorum": _rabbitmq,
    "redis": _redis,
    "redis_py": _redis,
    "redis_cluster": _redis_client,
    "sqlite": _sqlite,
}
