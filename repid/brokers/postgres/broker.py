"""PostgreSQL broker (asyncpg): a table of messages claimed with `FOR UPDATE SKIP LOCKED`.

A delivery is a row leased by a random token until `lease_until`; the worker renews the lease
while the actor runs and every consumer sweeps expired leases (a SIGKILLed worker's rows) back
to the queue. LISTEN/NOTIFY wakes idle consumers, polling is the fallback. Dead letters have
their own table. `transaction(conn)` makes enqueues join the caller's own transaction.
Needs `pip install repid[postgres]`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import asyncpg

from repid.brokers.base import BrokerCapabilities, ConnectionPolicy, Delivery, OutgoingMessage
from repid.brokers.postgres import _sql as sql
from repid.brokers.postgres._batch import Coalescer
from repid.brokers.postgres._events import PostgresEventBus
from repid.brokers.postgres._link import Link
from repid.brokers.postgres._listener import Listener
from repid.brokers.postgres._schema import SCHEMA_VERSION, Names, current_version, upgrade
from repid.brokers.postgres._state import StateMixin
from repid.brokers.postgres._transaction import Transaction, current_connection
from repid.brokers.postgres.consumer import PostgresConsumer
from repid.codec import decode_message, encode_message
from repid.data import MessageCategory, Parameters, PrioritiesT, RoutingKey
from repid.errors import (
    ConfigurationError,
    DecodeError,
    MessageTooLargeError,
    QueueNotDeclaredError,
)

__all__ = ["PostgresMessageBroker"]

logger = logging.getLogger("repid.brokers.postgres")


def _due(params: Parameters) -> float:
    delay = params.delay
    when = delay.next_execution_time or delay.delay_until
    return 0.0 if when is None else when.timestamp()


def _stale(op: str, key: Delivery) -> None:
    logger.warning(
        "stale %s of message %s in %s ignored: its lease expired and it was handed out again",
        op,
        key.key.id_,
        key.key.queue,
    )


LIVENESS_PING_TIMEOUT = 1.0
"""Seconds a liveness `ping()` waits for the server."""


class PostgresMessageBroker(StateMixin, PostgresEventBus):
    """A message broker on PostgreSQL (asyncpg).

    Args:
        dsn: `postgresql://user[:password]@host[:port]/database` (asyncpg's format).
        schema: the schema holding the broker's tables (created by the schema upgrade).
        prefix: prefix of the broker's table names (several apps can share one schema).
        lease_duration: seconds a claimed row stays owned without renewal; the worker renews
            it every third of that while the actor runs. An expired row (a crashed worker's)
            is returned to the queue by the next lease sweep of any consumer.
        retention: keep acknowledged messages in the `archive` table for this long (purged
            by the lease sweeps); None (the default) deletes them on acknowledgement.
        poll_interval: at most this many seconds pass between two claims of an idle consumer
            when no NOTIFY arrives (the fallback of LISTEN/NOTIFY).
        auto_upgrade: apply missing schema migrations on `connect()` (else run
            `repid db upgrade` first).
        pool_size: connections of the broker's pool (opened on connect; the LISTEN
            connection is one more).
        max_message_size: largest envelope accepted by `enqueue`, in bytes.
        connect_timeout: seconds one connection attempt may take (default 5).
        operation_timeout: seconds an operation keeps retrying while PostgreSQL is unreachable
            before raising `BrokerUnavailableError` (default 10).
        reconnect_backoff: seconds before the first retry; later ones double, up to 2 s.
        synchronous_settlements: commit claims, acks, retries and dead letters with
            `synchronous_commit = on`. Off by default: they then commit without waiting for
            the WAL flush, so a PostgreSQL crash can undo the last fraction of a second of
            them, which returns those messages to their leased state and so to the queue
            (a duplicate run, never a lost job). Enqueues always wait for the flush.
    """

    def __init__(
        self,
        dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres",
        *,
        schema: str = "repid",
        prefix: str = "",
        lease_duration: float = 30.0,
        retention: timedelta | None = None,
        poll_interval: float = 1.0,
        auto_upgrade: bool = True,
        pool_size: int = 6,
        max_message_size: int | None = 16 * 1024 * 1024,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
        synchronous_settlements: bool = False,
    ) -> None:
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout,
            operation_timeout,
            reconnect_backoff,
            defaults=ConnectionPolicy(reconnect_backoff=0.05),
        )
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
            liveness=True,
            event_bus=True,
        )
        self.names = Names(schema, prefix)
        self.lease_duration = lease_duration
        self.retention = retention
        self.poll_interval = poll_interval
        self.auto_upgrade = auto_upgrade
        self.max_message_size = max_message_size
        self.sweep_interval = min(1.0, lease_duration / 4)
        self._q = {name: self.names.sql(getattr(sql, name)) for name in dir(sql) if name.isupper()}
        self.link = Link(dsn, self.connection_policy, 3)
        """Enqueues, queue management, state: every commit waits for the WAL flush."""
        self.settling = Link(
            dsn,
            self.connection_policy,
            pool_size,
            None if synchronous_settlements else {"synchronous_commit": "off"},
            warm_up=[
                (self._q["CLAIM"], ("", 0.0, 0, 0, 0.0, None)),
                (self._q["ACK"], ([], [])),
                (self._q["NACK"], (-1, -1, b"", None)),
                (self._q["REJECT"], (-1, -1)),
                (self._q["REQUEUE"], (-1, -1, b"", 0.0)),
                (self._q["RENEW"], ([], [], 0.0)),
                (self._q["NEXT_DUE"], ("", 0.0)),
            ],
        )
        """Claims and settlements (see `synchronous_settlements`)."""
        self._listener = Listener(
            self.link, self.names.channel, self._wake, self._q["MY_SESSION"], self._new_session
        )
        self._consumers: dict[str, set[PostgresConsumer]] = {}
        self._acks: Coalescer[tuple[int, int], set[int]] = Coalescer(self._send_acks)
        self._enqueues: Coalescer[tuple[Any, ...], None] = Coalescer(self._send_enqueues)
        self._next_sweep = 0.0
        self._init_state()
        self.is_connected = False

    def __repr__(self) -> str:
        return (
            f"PostgresMessageBroker({self.link.masked_dsn!r}, schema={self.names.schema!r}, "
            f"prefix={self.names.prefix!r})"
        )

    # -- connection -------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the pool (and apply the schema upgrade unless `auto_upgrade=False`); raises
        `BrokerUnavailableError` if PostgreSQL cannot be reached."""
        if self.auto_upgrade:
            await self.upgrade_schema()
        else:
            await self.require_schema()
        await self.link.pool()
        await self.settling.pool()
        self._listener.start()
        self.is_connected = True

    async def upgrade_schema(self) -> list[int]:
        """Create or migrate this broker's tables; returns the migrations applied."""

        async def run(conn: asyncpg.Connection) -> list[int]:
            return await upgrade(conn, self.names)

        applied: list[int] = await self.link.run("schema upgrade", run)
        return applied

    async def require_schema(self) -> None:
        """Raise `ConfigurationError` unless the database schema is at this repid's version."""

        async def run(conn: asyncpg.Connection) -> int:
            return await current_version(conn, self.names)

        version = await self.link.run("schema check", run)
        if version != SCHEMA_VERSION:
            raise ConfigurationError(
                f"the tables {self.names.schema}.{self.names.prefix}* are at schema version "
                f"{version}, this repid needs {SCHEMA_VERSION}: run `repid db upgrade` "
                "(or pass auto_upgrade=True)"
            )

    async def ping(self) -> bool:
        """A `SELECT 1` on the pool answers."""
        pool = await self.link.pool()
        return bool(await pool.fetchval("SELECT 1", timeout=LIVENESS_PING_TIMEOUT) == 1)

    async def disconnect(self) -> None:
        await self._listener.stop()
        await self._close_limiters()
        await self._acks.close()
        await self._enqueues.close()
        await self.settling.close()
        await self.link.close()
        self.is_connected = False

    def transaction(self, conn: asyncpg.Connection) -> Transaction:
        """Enqueue inside the caller's transaction on `conn` (an asyncpg connection).

        Within `with broker.transaction(conn):` (or `async with`), `enqueue` and
        `enqueue_many` write on `conn`, so the jobs exist if and only if the caller's
        transaction commits; idle workers are woken when it does.
        """
        return Transaction(conn)

    def _wake(self, queue: str) -> None:
        targets = self._consumers.get(queue) if queue else None
        if targets is None and not queue:
            targets = {c for consumers in self._consumers.values() for c in consumers}
        for consumer in targets or ():
            consumer.notified()

    def subscribe(self, queue: str, consumer: PostgresConsumer) -> None:
        self._consumers.setdefault(queue, set()).add(consumer)

    def unsubscribe(self, queue: str, consumer: PostgresConsumer) -> None:
        consumers = self._consumers.get(queue)
        if consumers is not None:
            consumers.discard(consumer)
            if not consumers:
                del self._consumers[queue]

    # -- queues -------------------------------------------------------------------------------

    async def _execute(self, what: str, query: str, *args: Any, link: Link | None = None) -> str:
        async def run(conn: asyncpg.Connection) -> str:
            status: str = await conn.execute(query, *args)
            return status

        return await (link or self.link).run(what, run)

    async def _fetch(
        self, what: str, query: str, *args: Any, link: Link | None = None
    ) -> list[Any]:
        async def run(conn: asyncpg.Connection) -> list[Any]:
            rows: list[Any] = await conn.fetch(query, *args)
            return rows

        return await (link or self.link).run(what, run)

    async def _fetchval(self, what: str, query: str, *args: Any, link: Link | None = None) -> Any:
        async def run(conn: asyncpg.Connection) -> Any:
            return await conn.fetchval(query, *args)

        return await (link or self.link).run(what, run)

    async def queue_declare(self, queue_name: str) -> None:
        await self._execute("declare", self._q["DECLARE"], queue_name)

    async def queue_flush(self, queue_name: str) -> None:
        await self.require_declared(queue_name)
        await self._execute("flush", self._q["FLUSH"], queue_name)

    async def queue_delete(self, queue_name: str) -> None:
        await self._execute("delete queue", self._q["DELETE_QUEUE"], queue_name)

    async def require_declared(self, queue_name: str) -> None:
        """Raise `QueueNotDeclaredError` unless `queue_name` is declared."""
        if not await self._fetchval("queue lookup", self._q["IS_DECLARED"], queue_name):
            raise QueueNotDeclaredError(queue_name)

    async def queue_names(self) -> list[str]:
        """Names of the declared queues."""
        return [row[0] for row in await self._fetch("queue names", self._q["QUEUE_NAMES"])]

    async def counts(self, queue_name: str) -> dict[str, int]:
        """Number of messages per part of the queue: ready, delayed, in_flight, dead."""
        await self.require_declared(queue_name)
        rows = await self._fetch("counts", self._q["COUNTS"], queue_name, time.time())
        ready, delayed, in_flight, dead = rows[0]
        return {"ready": ready, "delayed": delayed, "in_flight": in_flight, "dead": dead}

    # -- publishing ------------------------------------------------------------------------

    def _envelope(self, key: RoutingKey, payload: str, params: Parameters) -> bytes:
        envelope = encode_message(key, payload, params)
        limit = self.max_message_size
        if limit is not None and len(envelope) > limit:
            raise MessageTooLargeError(len(envelope), limit)
        return envelope

    async def enqueue(
        self, key: RoutingKey, payload: str = "", params: Parameters | None = None
    ) -> None:
        if params is None:
            params = Parameters()
        envelope = self._envelope(key, payload, params)
        args = (key.queue, key.id_, key.topic, int(key.priority), envelope, _due(params))
        try:
            caller = current_connection()
            if caller is not None:
                await caller.execute(self._q["ENQUEUE"], *args)
                return
            try:
                await self._enqueues.submit(args)
                return
            except asyncpg.ForeignKeyViolationError:
                pass  # some queue of the batch is not declared: on its own, to know which
            await self._execute(f"enqueue to {key.queue!r}", self._q["ENQUEUE"], *args)
        except asyncpg.ForeignKeyViolationError:
            raise QueueNotDeclaredError(key.queue) from None

    async def _send_enqueues(self, rows: list[tuple[Any, ...]]) -> None:
        if len(rows) == 1:
            await self._execute("enqueue", self._q["ENQUEUE"], *rows[0])
            return
        columns = [list(column) for column in zip(*rows, strict=True)]
        await self._execute("enqueue", self._q["ENQUEUE_MANY"], *columns)

    async def enqueue_many(self, messages: Sequence[OutgoingMessage]) -> None:
        """Publish several messages in one statement (all or none)."""
        columns: tuple[list[Any], ...] = ([], [], [], [], [], [])
        for key, payload, params in messages:
            envelope = self._envelope(key, payload, params)
            values = (key.queue, key.id_, key.topic, int(key.priority), envelope, _due(params))
            for column, value in zip(columns, values, strict=True):
                column.append(value)
        if not messages:
            return
        try:
            caller = current_connection()
            if caller is not None:
                await caller.execute(self._q["ENQUEUE_MANY"], *columns)
            else:
                await self._execute("enqueue", self._q["ENQUEUE_MANY"], *columns)
        except asyncpg.ForeignKeyViolationError:
            declared = {
                row[0]
                for row in await self._fetch(
                    "queue lookup", self._q["DECLARED_AMONG"], sorted(set(columns[0]))
                )
            }
            missing = sorted(set(columns[0]) - declared)
            raise QueueNotDeclaredError(missing[0] if missing else columns[0][0]) from None

    # -- claiming -------------------------------------------------------------------------------

    async def claim(
        self, queue: str, count: int, topics: frozenset[str] | None, consumer: PostgresConsumer
    ) -> list[Delivery]:
        """Lease up to `count` ready rows of `queue`, by priority then enqueue order."""
        now = time.time()
        if now >= self._next_sweep:
            await self.sweep(now)
        token = secrets.randbits(63)
        if topics is None:
            rows = await self._fetch(
                "claim",
                self._q["CLAIM"],
                queue,
                now,
                count,
                token,
                self.lease_duration,
                self.owner if self.heartbeating else None,
                link=self.settling,
            )
        else:
            rows = await self._fetch(
                "claim",
                self._q["CLAIM_TOPICS"],
                queue,
                now,
                count,
                token,
                self.lease_duration,
                self.owner if self.heartbeating else None,
                sorted(topics),
                link=self.settling,
            )
        if len(rows) > 1:
            rows.sort(key=lambda row: (row[3], row[4]))
        return [self._delivery(row, token, consumer) for row in rows]

    def _delivery(self, row: Any, token: int, consumer: PostgresConsumer | None) -> Delivery:
        row_id, envelope, redelivered, priority, _, job_id, topic = row
        handle = (row_id, token, consumer)
        try:
            key, payload, params = decode_message(envelope, self.max_message_size)
        except DecodeError as exc:
            key = RoutingKey(
                job_id, topic, consumer.queue if consumer else "", PrioritiesT(priority)
            )
            return Delivery(
                key,
                "",
                Parameters(),
                handle,
                raw=bytes(envelope),
                decode_error=str(exc),
                redelivered=redelivered,
            )
        return Delivery(key, payload, params, handle, redelivered=redelivered)

    async def next_wakeup(self, queue: str) -> float:
        """Seconds an idle consumer of `queue` may sleep: until the next due delayed message,
        the next lease sweep or the poll interval, whichever comes first."""
        now = time.time()
        wait = min(self.poll_interval, max(0.0, self._next_sweep - now) + 0.001)
        due = await self._fetchval("next due", self._q["NEXT_DUE"], queue, now)
        if due is not None:
            wait = min(wait, max(0.001, due - now))
        return wait

    async def sweep(self, now: float | None = None) -> int:
        """Return rows whose lease expired (their worker died or hung) to their queues."""
        now = time.time() if now is None else now
        self._next_sweep = time.time() + self.sweep_interval
        rows = await self._fetch("lease sweep", self._q["REAP"], now, link=self.settling)
        for queue, job_id, expired in rows:
            if expired:
                logger.warning(
                    "lease of message %s in %s expired; it is available again", job_id, queue
                )
            else:
                logger.warning(
                    "the worker holding message %s in %s is gone (its session ended); "
                    "the message is available again",
                    job_id,
                    queue,
                )
        if self.retention is not None:
            before = now - self.retention.total_seconds()
            await self._execute(
                "archive purge", self._q["ARCHIVE_PURGE"], before, link=self.settling
            )
        return len(rows)

    async def browse(
        self, queue: str, category: MessageCategory, count: int, seen: list[int]
    ) -> list[Delivery]:
        """Dead letters or delayed messages of `queue` (not leased), skipping `seen` rows."""
        if category is MessageCategory.DEAD:
            after = max(seen, default=0)
            rows = await self._fetch("browse", self._q["BROWSE_DEAD"], queue, after, count)
        else:
            rows = await self._fetch(
                "browse", self._q["BROWSE_DELAYED"], queue, time.time(), seen, count
            )
        out = []
        for row_id, envelope, extra in rows:
            raw = bytes(extra) if category is MessageCategory.DEAD and extra is not None else None
            try:
                key, payload, params = decode_message(envelope, self.max_message_size)
            except DecodeError as exc:
                key = RoutingKey(f"row-{row_id}", "", queue, PrioritiesT.MEDIUM)
                out.append(
                    Delivery(
                        key,
                        "",
                        Parameters(),
                        (row_id,),
                        category=category,
                        raw=bytes(envelope),
                        decode_error=str(exc),
                    )
                )
                continue
            out.append(Delivery(key, payload, params, (row_id,), category=category, raw=raw))
        return out

    # -- settling -------------------------------------------------------------------------------

    async def ack(self, key: Delivery) -> bool:
        if key.category is MessageCategory.DEAD:
            return (await self._execute("ack", self._q["DEAD_DELETE"], key.handle[0])) != "DELETE 0"
        if key.category is MessageCategory.DELAYED:
            return bool(await self._fetchval("ack", self._q["DELAYED_DELETE"], key.handle[0]))
        row_id, token, consumer = key.handle
        try:
            acked = await self._acks.submit((row_id, token))
        finally:
            if consumer is not None:
                consumer.settled(row_id)
        if row_id in acked:
            return True
        _stale("ack", key)
        return False

    async def _send_acks(self, deliveries: list[tuple[int, int]]) -> set[int]:
        ids = [row_id for row_id, _ in deliveries]
        tokens = [token for _, token in deliveries]
        query = self._q["ACK" if self.retention is None else "ACK_ARCHIVE"]
        rows = await self._fetch("ack", query, ids, tokens, link=self.settling)
        return {row[0] for row in rows}

    @staticmethod
    def _done(key: Delivery) -> None:
        """The delivery is settled (or failed to be): its consumer may claim another one."""
        if key.category is MessageCategory.NORMAL and key.handle[2] is not None:
            key.handle[2].settled(key.handle[0])

    async def nack(self, key: Delivery, parameters: Parameters | None = None) -> bool:
        if key.category is MessageCategory.DEAD:
            return True
        envelope = encode_message(key.key, key.payload, parameters or key.parameters)
        raw = key.raw if key.decode_error is not None else None
        token = key.handle[1] if key.category is MessageCategory.NORMAL else None
        try:
            moved = await self._fetchval(
                "nack", self._q["NACK"], key.handle[0], token, envelope, raw, link=self.settling
            )
        finally:
            self._done(key)
        if moved:
            return True
        _stale("nack", key)
        return False

    async def reject(self, key: Delivery) -> bool:
        if key.category is not MessageCategory.NORMAL:
            return True  # a browsed dead or delayed message stays where it is
        try:
            status = await self._execute(
                "reject", self._q["REJECT"], *key.handle[:2], link=self.settling
            )
        finally:
            self._done(key)
        if status != "UPDATE 0":
            return True
        _stale("reject", key)
        return False

    async def requeue(
        self, key: Delivery, payload: str | None = None, params: Parameters | None = None
    ) -> bool:
        new_params = key.parameters if params is None else params
        envelope = self._envelope(key.key, key.payload if payload is None else payload, new_params)
        due = _due(new_params)
        if key.category is MessageCategory.DEAD:
            return bool(
                await self._fetchval(
                    "requeue", self._q["DEAD_REQUEUE"], key.handle[0], envelope, due
                )
            )
        token = key.handle[1] if key.category is MessageCategory.NORMAL else None
        try:
            status = await self._execute(
                "requeue",
                self._q["REQUEUE"],
                key.handle[0],
                token,
                envelope,
                due,
                link=self.settling,
            )
        finally:
            self._done(key)
        if status != "UPDATE 0":
            return True
        _stale("requeue", key)
        return False

    async def renew(self, deliveries: Sequence[Delivery]) -> None:
        ids = [d.handle[0] for d in deliveries if d.category is MessageCategory.NORMAL]
        tokens = [d.handle[1] for d in deliveries if d.category is MessageCategory.NORMAL]
        if ids:
            until = time.time() + self.lease_duration
            await self._execute("renew", self._q["RENEW"], ids, tokens, until, link=self.settling)

    def get_consumer(
        self,
        queue: str,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
    ) -> PostgresConsumer:
        return PostgresConsumer(self, queue, topics, max_unacked_messages, category)
