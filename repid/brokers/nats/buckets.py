"""Args and results buckets in a JetStream key-value bucket."""

from __future__ import annotations

import asyncio
import contextlib
import time
from datetime import timedelta

import nats.js.errors
from nats.js.kv import KeyValue

from repid.brokers.base import ConnectionPolicy
from repid.brokers.nats._link import NatsLink, safe_servers
from repid.brokers.nats._names import safe
from repid.brokers.nats._state import bucket_name
from repid.data import ArgsBucket, BucketT, ResultBucket

__all__ = ["NatsBucketBroker"]


class NatsBucketBroker:
    """Args or results storage in a NATS key-value bucket (`<prefix>args` / `<prefix>results`).

    Server 2.9 has no per-key expiry: each value is stored with its expiry time, a read after
    it finds nothing (and deletes the key), and the bucket's own `max_age` drops values after
    `max_age` at the latest.

    Args:
        servers: NATS URL(s).
        use_result_bucket: True to store actor results (`ResultBucket`), False for job args.
        prefix: prefix of the bucket name.
        ttl: expiry of buckets that carry no TTL of their own (None: kept up to `max_age`).
        max_age: the key-value bucket's `max_age` (its longest retention).
        connect_timeout, operation_timeout, reconnect_backoff: as for `NatsMessageBroker`.
    """

    def __init__(
        self,
        servers: str | list[str] = "nats://127.0.0.1:4222",
        *,
        use_result_bucket: bool = False,
        prefix: str = "repid-",
        ttl: timedelta | None = None,
        max_age: timedelta = timedelta(days=7),
        connect_timeout: float | None = None,
        operation_timeout: float | None = None,
        reconnect_backoff: float | None = None,
    ) -> None:
        self.servers = servers
        self.use_result_bucket = use_result_bucket
        self.prefix = prefix
        self.ttl = ttl
        self.max_age = max_age
        self.connection_policy = ConnectionPolicy.resolve(
            connect_timeout, operation_timeout, reconnect_backoff
        )
        self.link = NatsLink(servers, self.connection_policy)
        self.BUCKET_CLASS: type[ArgsBucket] | type[ResultBucket] = (
            ResultBucket if use_result_bucket else ArgsBucket
        )
        self.bucket = bucket_name(safe(prefix), "results" if use_result_bucket else "args")
        self._kv: KeyValue | None = None

    def __repr__(self) -> str:
        return f"NatsBucketBroker({safe_servers(self.servers)!r}, bucket={self.bucket!r})"

    async def connect(self) -> None:
        await self.link.connect()
        js = self.link.js
        self._kv = await self.link.call(
            "open a key-value bucket",
            lambda: js.create_key_value(
                bucket=self.bucket, history=1, ttl=self.max_age.total_seconds()
            ),
        )

    async def disconnect(self) -> None:
        self._kv = None
        await self.link.close()

    @property
    def kv(self) -> KeyValue:
        if self._kv is None:
            raise RuntimeError("NatsBucketBroker is not connected")
        return self._kv

    async def get_bucket(self, id_: str) -> BucketT | None:
        kv = self.kv
        try:
            entry = await self.link.call("read a bucket", lambda: kv.get(safe(id_)))
        except nats.js.errors.KeyNotFoundError:
            return None
        if not entry.value:
            return None
        expiry, _, raw = entry.value.partition(b"\n")
        if expiry and float(expiry) < time.time():
            await self.delete_bucket(id_)
            return None
        return self.BUCKET_CLASS.decode(raw)

    async def store_bucket(self, id_: str, payload: BucketT) -> None:
        ttl = payload.ttl if payload.ttl is not None else self.ttl
        expiry = b"" if ttl is None else repr(time.time() + ttl.total_seconds()).encode()
        value = expiry + b"\n" + payload.encode().encode()
        kv = self.kv
        await self.link.call("store a bucket", lambda: kv.put(safe(id_), value))

    async def delete_bucket(self, id_: str) -> None:
        kv = self.kv
        with contextlib.suppress(nats.js.errors.KeyNotFoundError):
            await self.link.call("delete a bucket", lambda: kv.delete(safe(id_)))

    async def wait_bucket(self, id_: str, timeout: float | None) -> BucketT | None:
        """Return the bucket once stored, or None after `timeout` seconds (polls, 2-50 ms)."""
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
