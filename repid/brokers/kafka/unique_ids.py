"""Where the Kafka broker remembers user-given job ids while their message is pending:
in this process (the default), or in a bucket broker the user passes (`unique_ids=`)."""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta

from repid.brokers.base import BucketBrokerT
from repid.data import ArgsBucket

__all__ = ["UniqueIds"]

logger = logging.getLogger("repid.brokers.kafka")


class UniqueIds:
    """Pending user-given ids of a broker's queues.

    In this process, a dict of expiry times; in a bucket broker, one empty bucket per id
    (check-then-set, so two producers racing on one id may both send it). `release(...,
    together=True)` (the worker's settling) deletes the ids released in the same event-loop
    step from a bucket broker in one request; `flush()` waits for that.

    Args:
        prefix: prepended to every entry (keeps brokers with different topic prefixes apart).
        ttl: how long a pending id is remembered at most.
        store: a bucket broker shared by processes (connected and disconnected with this);
            None keeps the ids in this process.
    """

    def __init__(self, prefix: str, ttl: timedelta, store: BucketBrokerT | None = None) -> None:
        self.prefix = prefix
        self.ttl = ttl
        self.store = store
        self._local: dict[str, float] = {}
        """Entry -> when it expires (time.monotonic()), without a store."""
        self._releases: list[str] = []
        self._release_flush: asyncio.Task[None] | None = None

    def entry(self, queue_name: str, id_: str) -> str:
        """The name under which id `id_` of queue `queue_name` is remembered."""
        return f"{self.prefix}{queue_name}:{id_}"

    async def connect(self) -> None:
        if self.store is not None:
            await self.store.connect()

    async def disconnect(self) -> None:
        if self.store is not None:
            await self.store.disconnect()

    async def claim(self, queue_name: str, id_: str) -> bool:
        """Remember the id as pending; False if it already is."""
        name = self.entry(queue_name, id_)
        if self.store is None:
            now = time.monotonic()
            expires = self._local.get(name)
            if expires is not None and expires > now:
                return False
            self._local[name] = now + self.ttl.total_seconds()
            return True
        if await self.store.get_bucket(name) is not None:
            return False
        await self.store.store_bucket(name, ArgsBucket("", ttl=self.ttl))
        return True

    async def release(self, queue_name: str, id_: str, *, together: bool = False) -> None:
        """The id is not pending any more (see the class for `together`)."""
        name = self.entry(queue_name, id_)
        if self.store is None:
            self._local.pop(name, None)
            return
        if not together:
            await self.store.delete_bucket(name)
            return
        self._releases.append(name)
        if self._release_flush is None or self._release_flush.done():
            self._release_flush = asyncio.ensure_future(self._flush_releases(self.store))

    async def _flush_releases(self, store: BucketBrokerT) -> None:
        while self._releases:
            names, self._releases = self._releases, []
            try:
                await _delete_buckets(store, names)
            except Exception as exc:  # the entries expire after unique_ttl anyway
                logger.warning(
                    "freeing %d unique ids failed (%r); they stay taken until unique_ttl passes",
                    len(names),
                    exc,
                )

    async def flush(self) -> None:
        """Wait until the ids released `together` so far are deleted from the store."""
        while self._release_flush is not None and not self._release_flush.done():
            await asyncio.shield(self._release_flush)

    def forget_queue(self, queue_name: str) -> None:
        """The queue was flushed or deleted: forget its ids (kept in this process; a shared
        store's entries expire by themselves)."""
        start = self.entry(queue_name, "")
        for name in [n for n in self._local if n.startswith(start)]:
            del self._local[name]


async def _delete_buckets(store: BucketBrokerT, names: list[str]) -> None:
    """Delete buckets `names`: in one request where the store can (`_delete_many`)."""
    many = getattr(store, "_delete_many", None)
    if many is not None:
        await many(names)
    else:
        await asyncio.gather(*(store.delete_bucket(name) for name in names))
