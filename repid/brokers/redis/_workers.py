"""Per-actor limiters and the live-worker registry kept in Redis.

Shared by the Redis broker and `repid.state.redis.RedisSharedState`, so both write the same keys.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from pydantic_core import from_json, to_json

from repid.brokers.redis._limiter import RedisActorLimiter
from repid.brokers.redis._link import SCRIPTS, Link
from repid.lifecycle import STALE_AFTER, RateLimit, WorkerInfo

__all__ = ["WorkersAndLimits", "hash_tagged", "worker_infos", "worker_record"]


def hash_tagged(prefix: str, tag: str) -> str:
    """`prefix` with the cluster hash tag `{tag}` after it, unless it already has one: keys
    under the result share one Redis Cluster slot (a script or MULTI may touch them together).
    """
    opening = prefix.find("{")
    if opening != -1 and prefix.find("}", opening + 2) != -1:
        return prefix
    return f"{prefix}{{{tag}}}:"


def worker_record(info: WorkerInfo) -> bytes:
    """The JSON record of a worker in the registry (the Redis broker's format)."""
    return to_json(
        {
            "id": info.id,
            "host": info.host,
            "pid": info.pid,
            "queues": list(info.queues),
            "concurrency": info.concurrency,
            "in_flight": info.in_flight,
            "started_at": info.started_at,
            "last_seen": info.last_seen,
        }
    )


def worker_infos(records: Iterable[bytes]) -> list[WorkerInfo]:
    """Registry records, oldest worker first."""
    workers = []
    for raw in records:
        obj = from_json(raw)
        obj["queues"] = tuple(obj["queues"])
        workers.append(WorkerInfo(**obj))
    return sorted(workers, key=lambda info: info.started_at)


class WorkersAndLimits:
    """Per-actor limiters and the live-worker registry in Redis (the Redis broker and
    `RedisSharedState` share it, so both write the same keys and records).

    Users set `link`, `prefix`, `lease_duration` and call `_init_workers_and_limits()`.
    """

    link: Link
    prefix: str
    lease_duration: float

    def _init_workers_and_limits(self) -> None:
        # One hash tag: the registry's two keys are changed together (one slot on a cluster).
        base = hash_tagged(self.prefix, "workers")
        self._workers_key = f"{base}workers".encode()
        self._seen_key = f"{base}workers:seen".encode()
        self._limiters: dict[str, RedisActorLimiter] = {}

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> RedisActorLimiter:
        """The limiter of `actor`, shared through Redis by every worker using this prefix.

        Concurrency slots are leases: a crashed worker's slots free themselves after
        `lease_duration`.
        """
        limiter = self._limiters.get(actor)
        if (
            limiter is None
            or limiter.max_concurrency != max_concurrency
            or limiter.rate_limit != rate_limit
        ):
            limiter = RedisActorLimiter(
                self.link,
                hash_tagged(f"{self.prefix}limit:", actor) + "limit",
                max_concurrency,
                rate_limit,
                self.lease_duration,
            )
            self._limiters[actor] = limiter
        return limiter

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record that worker `info.id` is alive (listed by `live_workers`)."""
        await self.link.transaction(
            ("HSET", self._workers_key, info.id, worker_record(info)),
            ("ZADD", self._seen_key, int(info.last_seen * 1000), info.id),
        )

    async def unregister_worker(self, worker_id: str) -> None:
        await self.link.transaction(
            ("HDEL", self._workers_key, worker_id), ("ZREM", self._seen_key, worker_id)
        )

    async def live_workers(self, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
        """Workers heard from within `stale_after` seconds; staler ones are forgotten."""
        oldest = int((time.time() - stale_after) * 1000)
        records = await self.link.script(
            SCRIPTS["live_workers"], [self._workers_key, self._seen_key], [oldest]
        )
        return worker_infos(records)
