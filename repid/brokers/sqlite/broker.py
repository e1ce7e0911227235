"""SQLite broker: one file shared by the producer and worker processes of one machine, no server.

The file is in WAL mode (readers never block the writer); every change is one transaction on a
connection that lives on its own thread, so the event loop never blocks on the disk. The
writes issued in one event-loop step are committed together (`_db.Database`). Claims are
`UPDATE ... RETURNING` under leases that the worker renews while an actor runs; an expired
lease (a killed worker's) makes its message ready again at the next claim. Standard library
only: `SqliteMessageBroker("sqlite:////var/lib/app/repid.db")`.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence

from repid.brokers.base import BrokerCapabilities, Delivery, OutgoingMessage
from repid.brokers.sqlite import _sql
from repid.brokers.sqlite._db import Database, database_path
from repid.brokers.sqlite._events import SqliteEventBus
from repid.brokers.sqlite._state import SharedStateInFile, SqliteActorLimiter
from repid.brokers.sqlite.consumer import SqliteConsumer
from repid.codec import encode_message
from repid.data import MessageCategory, Parameters, RoutingKey
from repid.errors import MessageTooLargeError

__all__ = ["SqliteMessageBroker"]

logger = logging.getLogger("repid.brokers.sqlite")


def _due(params: Parameters) -> float:
    delay = params.delay
    when = delay.next_execution_time or delay.delay_until
    return 0.0 if when is None else when.timestamp()


def _stale(op: str, key: Delivery) -> bool:
    logger.warning(
        "stale %s of message %s in %s ignored: its lease expired and it was handed out again",
        op,
        key.key.id_,
        key.key.queue,
    )
    return False


class SqliteMessageBroker(SharedStateInFile, SqliteEventBus):
    """A message broker in one SQLite file, shared by every process that opens it.

    Args:
        dsn: `sqlite:///relative/path.db`, `sqlite:////absolute/path.db` or a plain path.
        lease_duration: seconds a delivery stays owned without renewal; the worker renews it
            every third of that while the actor runs. An expired delivery (a killed worker's)
            is handed out again.
        poll_interval: the longest an idle consumer waits before looking for messages that
            another process committed (a commit in this process wakes it at once).
        max_message_size: largest envelope accepted by `enqueue`, in bytes.
        synchronous: SQLite's `synchronous` setting: "NORMAL" (default: a returned enqueue or
            ack survives a crash of any process; a power cut may lose the last commits, never
            the file), "FULL" (also survives a power cut: one fsync per commit, slower),
            "OFF" (not durable on a power cut).
        busy_timeout: seconds a statement waits for another process's write lock.
        operation_timeout: seconds an operation keeps retrying while the file stays locked
            before raising `BrokerUnavailableError`.
    """

    def __init__(
        self,
        dsn: str | os.PathLike[str] = "sqlite:///repid.db",
        *,
        lease_duration: float = 30.0,
        poll_interval: float = 0.05,
        max_message_size: int | None = 16 * 1024 * 1024,
        synchronous: str = "NORMAL",
        busy_timeout: float = 5.0,
        operation_timeout: float = 30.0,
    ) -> None:
        self.capabilities = BrokerCapabilities(
            strict_priorities=True,
            native_delays=True,
            native_dead_letters=True,
            lease_renewal=True,
            shared_state=True,
            persistent=True,
            max_message_size=max_message_size,
            lease_duration=lease_duration,
            cancellation=True,
            worker_registry=True,
            actor_limits=True,
            inspection=True,
            event_bus=True,
        )
        self.path = database_path(dsn)
        self.lease_duration = lease_duration
        self.poll_interval = poll_interval
        self.max_message_size = max_message_size
        self.db = Database(
            self.path,
            busy_timeout=busy_timeout,
            operation_timeout=operation_timeout,
            synchronous=synchronous,
        )
        self._limiters: dict[str, SqliteActorLimiter] = {}
        self.is_connected = False

    def __repr__(self) -> str:
        return f"SqliteMessageBroker({self.path!r})"

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the file (created if missing) in WAL mode and create the tables."""
        await self.db.open()
        self.is_connected = True

    async def disconnect(self) -> None:
        for limiter in self._limiters.values():
            await limiter.close()
        await self.db.close()
        self.is_connected = False

    # -- queues -------------------------------------------------------------------------------

    async def queue_declare(self, queue_name: str) -> None:
        await self.db.run(lambda conn: _sql.declare(conn, queue_name))

    async def queue_flush(self, queue_name: str) -> None:
        await self.db.run(lambda conn: _sql.flush(conn, queue_name))

    async def queue_delete(self, queue_name: str) -> None:
        await self.db.run(lambda conn: _sql.delete(conn, queue_name))

    async def queue_names(self) -> list[str]:
        """Names of the declared queues."""
        return await self.db.run(_sql.queue_names)

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Number of messages per part of the queue: ready, delayed, in_flight, dead."""
        return await self.db.run(lambda conn: _sql.counts(conn, queue_name))

    # -- publishing ------------------------------------------------------------------------

    def _row(self, key: RoutingKey, payload: str, params: Parameters) -> _sql.NewRow:
        envelope = encode_message(key, payload, params)
        limit = self.max_message_size
        if limit is not None and len(envelope) > limit:
            raise MessageTooLargeError(len(envelope), limit)
        return (key.queue, key.id_, key.topic, int(key.priority), _due(params), envelope)

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        """Insert one message; returns once it is committed (with this loop step's others)."""
        rows = [self._row(key, payload, params or Parameters())]
        now = time.time()
        (added,) = await self.db.run(
            lambda conn: _sql.insert(conn, rows, now), touches=(key.queue,)
        )
        if not added:
            logger.debug("message %s is already pending in %s; not added again", key.id_, key.queue)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Insert several messages in one transaction (all or none)."""
        rows = [self._row(key, payload, params) for key, payload, params in messages]
        now = time.time()
        await self.db.run(
            lambda conn: _sql.insert(conn, rows, now), touches={row[0] for row in rows}
        )

    # -- settling -------------------------------------------------------------------------------

    @staticmethod
    def _handle(key: Delivery) -> tuple[int, int, str]:
        seq, token, consumer = key.handle
        consumer.settled(seq)
        return seq, token, consumer.queue

    async def ack(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return await self._browsed(key, "ack")
        seq, token, _ = self._handle(key)
        id_ = key.key.id_
        done = await self.db.run(lambda conn: _sql.ack(conn, seq, token, id_))
        return done or _stale("ack", key)

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        if key.category is MessageCategory.DEAD:
            return True
        envelope = encode_message(key.key, key.payload, parameters or key.parameters)
        if key.category is MessageCategory.DELAYED:
            return await self._browsed(key, "nack", envelope)
        seq, token, _ = self._handle(key)
        raw = key.raw if key.decode_error is not None else None
        id_ = key.key.id_
        done = await self.db.run(lambda conn: _sql.nack(conn, seq, token, id_, envelope, raw))
        return done or _stale("nack", key)

    async def reject(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return True  # a browsed dead or delayed message stays where it is
        seq, token, queue = self._handle(key)
        done = await self.db.run(
            lambda conn: _sql.reject(conn, [(seq, token)]) == 1, touches=(queue,)
        )
        return done or _stale("reject", key)

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        new_params = key.parameters if params is None else params
        _, _, _, _, due, envelope = self._row(
            key.key, key.payload if payload is None else payload, new_params
        )
        if key.category is not MessageCategory.NORMAL:
            return await self._browsed(key, "requeue", envelope, due)
        seq, token, queue = self._handle(key)
        done = await self.db.run(
            lambda conn: _sql.requeue(conn, seq, token, envelope, due), touches=(queue,)
        )
        return done or _stale("requeue", key)

    async def _browsed(
        self, key: Delivery, op: str, envelope: bytes = b"", due: float = 0.0
    ) -> bool:
        state = _sql.DEAD if key.category is MessageCategory.DEAD else _sql.DELAYED
        seq: int = key.handle
        id_ = key.key.id_
        return await self.db.run(
            lambda conn: _sql.settle_browsed(conn, seq, state, op, id_, envelope, due),
            touches=(key.key.queue,),
        )

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        items = [
            (d.handle[0], d.handle[1]) for d in deliveries if d.category is MessageCategory.NORMAL
        ]
        if items:
            lease = self.lease_duration
            await self.db.run(lambda conn: _sql.renew(conn, items, lease))

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> SqliteConsumer:
        return SqliteConsumer(self, queue, topics, max_unacked_messages, category)
