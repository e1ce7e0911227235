"""Args and results buckets in this process, with TTL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import timedelta

from repid.data import ArgsBucket, BucketT, ResultBucket


class InMemoryBucketBroker:
    """Args or results storage in this process, with TTL.

    Args:
        use_result_bucket: True to store actor results (`ResultBucket`), False for job args.
    """

    def __init__(
        self, use_result_bucket: bool = False, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.use_result_bucket = use_result_bucket
        self.BUCKET_CLASS: type[ArgsBucket] | type[ResultBucket] = (
            ResultBucket if use_result_bucket else ArgsBucket
        )
        self._clock = clock
        self._data: dict[str, tuple[BucketT, float | None]] = {}
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}

    async def connect(self) -> None:
        pass

    async def disconnect(self) -> None:
        pass

    async def get_bucket(self, id_: str) -> BucketT | None:
        item = self._data.get(id_)
        if item is None:
            return None
        bucket, expires = item
        if expires is not None and expires <= self._clock():
            del self._data[id_]
            return None
        return bucket

    async def store_bucket(self, id_: str, payload: BucketT) -> None:
        ttl: timedelta | None = payload.ttl
        self._data[id_] = (payload, None if ttl is None else self._clock() + ttl.total_seconds())
        for fut in self._waiters.pop(id_, ()):
            if not fut.done():
                fut.set_result(None)

    async def delete_bucket(self, id_: str) -> None:
        self._data.pop(id_, None)

    async def wait_bucket(self, id_: str, timeout: float) -> BucketT | None:
        """Return the bucket once stored, or None after `timeout` seconds."""
        bucket = await self.get_bucket(id_)
        if bucket is not None:
            return bucket
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(id_, []).append(fut)
        try:
            await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            return None
        return await self.get_bucket(id_)

    def __len__(self) -> int:
        return len(self._data)
