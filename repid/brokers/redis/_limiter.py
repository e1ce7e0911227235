"""Per-actor concurrency and rate limits shared by every worker through Redis.

A concurrency slot is a lease (a sorted-set member with an expiry) renewed while its job runs,
so the slots of a worker that died free themselves; run starts are kept for the rate window.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from repid._cancel import await_quietly
from repid.brokers.redis._link import SCRIPTS, Link
from repid.lifecycle import ActorLimiter, RateLimit

__all__ = ["RedisActorLimiter"]

logger = logging.getLogger("repid.brokers.redis")


class RedisActorLimiter(ActorLimiter):
    """`ActorLimiter` whose slots and rate window live in Redis (never drops a job)."""

    def __init__(
        self,
        link: Link,
        key: str,
        max_concurrency: int | None,
        rate_limit: RateLimit | None,
        lease_duration: float,
    ) -> None:
        super().__init__(max_concurrency, rate_limit)
        self._link = link
        self._keys = [f"{key}:slots".encode(), f"{key}:starts".encode()]
        self._lease_ms = max(1, int(lease_duration * 1000))
        self._held: list[str] = []
        self._renewal: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    async def acquire(self) -> None:
        token = uuid.uuid4().hex
        window = 0 if self.rate_limit is None else int(self.rate_limit.per.total_seconds() * 1000)
        args: list[bytes | str | int | float] = [
            token,
            0,
            self.max_concurrency or 0,
            self._lease_ms,
            0 if self.rate_limit is None else self.rate_limit.limit,
            window,
        ]
        backoff = 0.05
        while True:
            args[1] = int(time.time() * 1000)
            try:
                wait_ms = await self._link.script(SCRIPTS["limiter"], self._keys, args)
            except Exception as exc:  # keep the job waiting; never drop it
                logger.warning("actor limiter: Redis failed (%r); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if wait_ms == 0:
                break
            await asyncio.sleep(wait_ms / 1000)
        if self.max_concurrency:
            self._held.append(token)
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._renew_slots())

    def release(self) -> None:
        if not self.max_concurrency or not self._held:
            return
        token = self._held.pop(0)
        task = asyncio.get_running_loop().create_task(self._release(token))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, token: str) -> None:
        try:
            await self._link.call("ZREM", self._keys[0], token, timeout=self._lease_ms / 1000)
        except Exception as exc:  # the slot is a lease: it frees itself when it expires
            logger.warning("actor limiter: releasing a slot failed (%r)", exc)

    async def _renew_slots(self) -> None:
        """Extend the held slots' leases while any is held (ends by itself when none is)."""
        while self._held:
            await asyncio.sleep(self._lease_ms / 3000)
            held = list(self._held)
            if not held:
                return
            expiry = int(time.time() * 1000) + self._lease_ms
            args: list[str | int] = []
            for token in held:
                args += [expiry, token]
            try:
                await self._link.call("ZADD", self._keys[0], "XX", *args)
            except Exception as exc:
                logger.warning("actor limiter: renewing slots failed (%r); will retry", exc)

    async def close(self) -> None:
        """Stop renewing and wait for pending releases."""
        if self._renewal is not None:
            self._renewal.cancel()
            await await_quietly(self._renewal)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
