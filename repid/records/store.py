"""Where job records live (`RecordStore`, `BucketRecordStore` on a results bucket) and the one
lifecycle-event handler that writes them (`RecordWriter`)."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from typing import Protocol, runtime_checkable

from repid.brokers.base import BucketBrokerT
from repid.data import ResultBucket
from repid.errors import ConfigurationError
from repid.lifecycle import JobEvent
from repid.records.model import JobRecord, apply_event

__all__ = ["BucketRecordStore", "RecordStore", "RecordWriter"]

logger = logging.getLogger("repid.records")

PREFIX = "repid_record_"
"""Bucket ids of records: this prefix and the job id (letters, digits, `-` and `_`, which every
bucket broker accepts as a key, NATS KV included)."""


@runtime_checkable
class RecordStore(Protocol):
    """Keeps one `JobRecord` per job id, for `retention` after its last change."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The record of `job_id`, None if there is none (never written, or expired)."""
        ...

    async def put(self, record: JobRecord, retention: timedelta | None) -> None:
        """Store `record`, replacing the previous one; it expires `retention` later."""
        ...

    async def delete(self, job_id: str) -> None:
        """Forget the record of `job_id`."""
        ...


class BucketRecordStore:
    """Records kept in a results bucket broker (`use_result_bucket=True`) of any broker:
    in-memory, Redis, NATS KV, PostgreSQL or SQLite (RabbitMQ and Kafka pair with one of those).

    A record is a result bucket whose `data` is the record's JSON, under `repid_record_<id>`;
    the bucket broker's TTL removes it after the retention (where it has one natively: Redis
    `EXPIRE`; the others check the expiry on read).
    """

    def __init__(self, bucket_broker: BucketBrokerT) -> None:
        if not getattr(bucket_broker, "use_result_bucket", False):
            raise ConfigurationError(
                "records need a results bucket broker (use_result_bucket=True)"
            )
        self.bucket_broker = bucket_broker

    async def get(self, job_id: str) -> JobRecord | None:
        bucket = await self.bucket_broker.get_bucket(PREFIX + job_id)
        if bucket is None:
            return None
        return JobRecord.from_json(bucket.data)

    async def put(self, record: JobRecord, retention: timedelta | None) -> None:
        bucket = ResultBucket(record.to_json(), True, ttl=retention)
        await self.bucket_broker.store_bucket(PREFIX + record.id, bucket)

    async def delete(self, job_id: str) -> None:
        await self.bucket_broker.delete_bucket(PREFIX + job_id)


class RecordWriter:
    """The lifecycle-event handler that keeps each job's record (`Connection(records=...)`
    registers it): every event a producer or worker emits updates the job's record.

    Args:
        store: where the records live.
        retention: how long a record is kept after its last change (None: for ever, or as long
            as the store's own default TTL).
        error_history: failed attempts kept per record (0: none).
        error_bytes: at most this many bytes of error text per record.
    """

    def __init__(
        self,
        store: RecordStore,
        *,
        retention: timedelta | None = timedelta(days=7),
        error_history: int = 5,
        error_bytes: int = 16_384,
    ) -> None:
        if error_history < 0 or error_bytes < 256:
            raise ConfigurationError("error_history must be >= 0 and error_bytes >= 256")
        self.store = store
        self.retention = retention
        self.error_history = error_history
        self.error_bytes = error_bytes
        self.actor_error_history: dict[str, int] = {}
        """Per-actor `error_history` (`@router.actor(error_history=...)`), over the default."""
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    async def __call__(self, event: JobEvent) -> None:
        # The events of one job are applied one at a time in this process: each is a read,
        # a change and a write of the record, and two handled at once would lose one.
        lock, users = self._locks.get(event.job_id, (asyncio.Lock(), 0))
        self._locks[event.job_id] = (lock, users + 1)
        try:
            async with lock:
                keep = self.actor_error_history.get(event.actor, self.error_history)
                record = await self.store.get(event.job_id)
                updated = apply_event(
                    record, event, error_history=keep, error_bytes=self.error_bytes
                )
                await self.store.put(updated, self.retention)
        finally:
            lock, users = self._locks[event.job_id]
            if users == 1:
                del self._locks[event.job_id]
            else:
                self._locks[event.job_id] = (lock, users - 1)
