"""Args and results buckets in PostgreSQL (one row per bucket, expiring with its TTL)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta
from typing import Any

import asyncpg

from repid.brokers.base import ConnectionPolicy
from repid.brokers.postgres import _sql as sql
from repid.brokers.postgres._link import Link
from repid.brokers.postgres._schema import Names, upgrade
from repid.brokers.postgres._transaction import current_connection
from repid.data import ArgsBucket, BucketT, ResultBucket

__all__ = ["PostgresBucketBroker"]

_PURGE_INTERVAL = 60.0
"""Seconds between two deletions of expired buckets (reads ignore expired ones anyway)."""


class PostgresBucketBroker:
    """Args or results storage in PostgreSQL, with TTL.

    Inside `broker.transaction(conn)` a stored bucket is written on the caller's connection too
    (an args bucket then exists exactly when the job does).

    Args:
        dsn: the PostgreSQL address (as for `PostgresMessageBroker`).
        use_result_bucket: True to store actor results (`ResultBucket`), False for job args.
        schema: the schema of the tables (the message broker's, to share its schema).
        prefix: prefix of the table names.
        ttl: expiry of buckets that carry no TTL of their own (None: kept until deleted).
        auto_upgrade: apply missing schema migrations on `connect()`.
        pool_size: connections of the pool (opened on connect).
        connect_timeout: seconds one connection attempt may take (default 5).
        operation_timeout: seconds an operation keeps retrying while PostgreSQL is unreachable
            (default 10).
        reconnect_backoff: seconds before the first retry (default 0.05), doubling up to 2 s.
    """

    def __init__(
        self,
        dsn: str = "postgresql://postgres@127.0.0.1:5432/postgres",
        *,
        use_result_bucket: bool = False,
        schema: str = "repid",
        prefix: str = "",
        ttl: timedelta | None = None,
        auto_upgrade: bool = True,
        pool_size: int = 2,
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
    ) -> None:
        policy = ConnectionPolicy.resolve(
            connect_timeout,
            operation_timeout,
            reconnect_backoff,
            defaults=ConnectionPolicy(reconnect_backoff=0.05),
        )
        self.use_result_bucket = use_result_bucket
        self.BUCKET_CLASS: type[ArgsBucket] | type[ResultBucket] = (
            ResultBucket if use_result_bucket else ArgsBucket
        )
        self.names = Names(schema, prefix)
        self.ttl = ttl
        self.auto_upgrade = auto_upgrade
        self.link = Link(dsn, policy, pool_size)
        self._kind = "result" if use_result_bucket else "args"
        self._q = {
            name: self.names.sql(getattr(sql, name))
            for name in dir(sql)
            if name.startswith("BUCKET")
        }
        self._next_purge = 0.0

    def __repr__(self) -> str:
        return f"PostgresBucketBroker({self.link.masked_dsn!r}, kind={self._kind!r})"

    async def connect(self) -> None:
        if self.auto_upgrade:

            async def run(conn: asyncpg.Connection) -> list[int]:
                return await upgrade(conn, self.names)

            await self.link.run("schema upgrade", run)
        await self.link.pool()

    async def disconnect(self) -> None:
        await self.link.close()

    async def _call(self, what: str, method: str, query: str, *args: Any) -> Any:
        caller = current_connection()
        if caller is not None:
            return await getattr(caller, method)(query, *args)

        async def run(conn: asyncpg.Connection) -> Any:
            return await getattr(conn, method)(query, *args)

        return await self.link.run(what, run)

    async def get_bucket(self, id_: str) -> BucketT | None:
        raw = await self._call(
            "get bucket", "fetchval", self._q["BUCKET_GET"], self._kind, id_, time.time()
        )
        return None if raw is None else self.BUCKET_CLASS.decode(raw)

    async def store_bucket(self, id_: str, payload: BucketT) -> None:
        now = time.time()
        ttl = payload.ttl if payload.ttl is not None else self.ttl
        expires = None if ttl is None else now + ttl.total_seconds()
        await self._call(
            "store bucket",
            "execute",
            self._q["BUCKET_STORE"],
            self._kind,
            id_,
            payload.encode(),
            expires,
        )
        if now >= self._next_purge:
            self._next_purge = now + _PURGE_INTERVAL
            await self._call("purge buckets", "execute", self._q["BUCKET_PURGE"], now)

    async def delete_bucket(self, id_: str) -> None:
        await self._call("delete bucket", "execute", self._q["BUCKET_DELETE"], self._kind, id_)

    async def wait_bucket(self, id_: str, timeout: float | None) -> BucketT | None:
        """Return the bucket once stored, or None after `timeout` seconds (None: no limit).

        Polls with a short backoff (2 ms, growing to 50 ms).
        """
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        pause = 0.002
        while True:
            bucket = await self.get_bucket(id_)
            if bucket is not None:
                return bucket
            if deadline is not None and loop.time() >= deadline:
                return None
            wait = pause if deadline is None else min(pause, max(0.0, deadline - loop.time()))
            await asyncio.sleep(wait)
            pause = min(pause * 2, 0.05)
