"""Args and results buckets in the SQLite file, with TTL (shared by every process using it)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from datetime import timedelta

from repid.brokers.sqlite._db import Database, database_path
from repid.data import ArgsBucket, BucketT, ResultBucket

__all__ = ["SqliteBucketBroker"]


class SqliteBucketBroker:
    """Args or results storage in a SQLite file (the message broker's file or another one).

    Args:
        dsn: the file, as for `SqliteMessageBroker`.
        use_result_bucket: True to store actor results (`ResultBucket`), False for job args.
        ttl: expiry of buckets that carry no TTL of their own (None: kept until deleted).
            Expired buckets are not returned and are deleted when next read or written.
        synchronous: SQLite's `synchronous` setting (as for `SqliteMessageBroker`).
        poll_interval: the longest `wait_bucket` waits between two looks at the file.
    """

    def __init__(
        self,
        dsn: str | os.PathLike[str] = "sqlite:///repid.db",
        *,
        use_result_bucket: bool = False,
        ttl: timedelta | None = None,
        synchronous: str = "NORMAL",
        poll_interval: float = 0.05,
    ) -> None:
        self.use_result_bucket = use_result_bucket
        self.BUCKET_CLASS: type[ArgsBucket] | type[ResultBucket] = (
            ResultBucket if use_result_bucket else ArgsBucket
        )
        self.path = database_path(dsn)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.db = Database(self.path, synchronous=synchronous)
        self._kind = "result" if use_result_bucket else "args"
        self._stored: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"SqliteBucketBroker({self.path!r}, use_result_bucket={self.use_result_bucket})"

    async def connect(self) -> None:
        await self.db.open()

    async def disconnect(self) -> None:
        await self.db.close()

    async def get_bucket(self, id_: str) -> BucketT | None:
        kind = self._kind

        def read(conn: sqlite3.Connection) -> str | bytes | None:
            row = conn.execute(
                "SELECT data, expires FROM repid_buckets WHERE kind = ? AND id = ?", (kind, id_)
            ).fetchone()
            if row is None:
                return None
            data, expires = row
            if expires is not None and expires <= time.time():
                conn.execute("DELETE FROM repid_buckets WHERE kind = ? AND id = ?", (kind, id_))
                return None
            value: str | bytes = data
            return value

        raw = await self.db.run(read)
        return None if raw is None else self.BUCKET_CLASS.decode(raw)

    async def store_bucket(self, id_: str, payload: BucketT) -> None:
        ttl = payload.ttl if payload.ttl is not None else self.ttl
        expires = None if ttl is None else time.time() + ttl.total_seconds()
        data, kind = payload.encode(), self._kind

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR REPLACE INTO repid_buckets (kind, id, data, expires) "
                "VALUES (?, ?, ?, ?)",
                (kind, id_, data, expires),
            )
            conn.execute(
                "DELETE FROM repid_buckets WHERE kind = ? AND expires <= ?", (kind, time.time())
            )

        await self.db.run(write)
        if self._stored is not None:
            self._stored.set()
            self._stored = None

    async def delete_bucket(self, id_: str) -> None:
        kind = self._kind
        await self.db.run(
            lambda conn: conn.execute(
                "DELETE FROM repid_buckets WHERE kind = ? AND id = ?", (kind, id_)
            )
        )

    async def wait_bucket(self, id_: str, timeout: float | None) -> BucketT | None:
        """Return the bucket once stored, or None after `timeout` seconds (None: no limit).

        A bucket stored through this object is seen at once; one stored by another process
        within `poll_interval` (the wait starts at 2 ms and doubles up to it).
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
            if self._stored is None:
                self._stored = asyncio.Event()
            stored = self._stored
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stored.wait(), wait)
            pause = min(pause * 2, self.poll_interval)
