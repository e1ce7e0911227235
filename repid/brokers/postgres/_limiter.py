"""Per-actor concurrency and rate limits shared by every worker through PostgreSQL.

A concurrency slot is a row with an expiry (a lease) renewed while its job runs, so the slots of
a worker that died free themselves; run starts are rows kept for the rate window. One function
call (`limiter_acquire`, under an advisory lock per actor) checks and takes both.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

from repid._cancel import await_quietly
from repid.lifecycle import ActorLimiter, RateLimit

__all__ = ["PostgresActorLimiter"]

logger = logging.getLogger("repid.brokers.postgres")


class PostgresActorLimiter(ActorLimiter):
    """`ActorLimiter` whose slots and rate window are rows of the broker's `limits` table."""

    def __init__(
        self,
        broker: Any,
        actor: str,
        max_concurrency: int | None,
        rate_limit: RateLimit | None,
        lease_duration: float,
    ) -> None:
        super().__init__(max_concurrency, rate_limit)
        self._broker = broker
        self._actor = actor
        self._lease = lease_duration
        self._held: list[str] = []
        self._renewal: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    async def acquire(self) -> None:
        token = uuid.uuid4().hex
        window = 0.0 if self.rate_limit is None else self.rate_limit.per.total_seconds()
        rate = 0 if self.rate_limit is None else self.rate_limit.limit
        backoff = 0.05
        q = self._broker._q
        while True:
            try:
                wait = await self._broker._fetchval(
                    "actor limiter",
                    q["LIMITER_ACQUIRE"],
                    self._actor,
                    token,
                    time.time(),
                    self.max_concurrency or 0,
                    self._lease,
                    rate,
                    window,
                )
            except Exception as exc:  # keep the job waiting; never drop it
                logger.warning("actor limiter: PostgreSQL failed (%r); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if wait == 0:
                break
            await asyncio.sleep(wait)
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
            await self._broker._execute(
                "actor limiter", self._broker._q["LIMITER_RELEASE"], self._actor, token
            )
        except Exception as exc:  # the slot is a lease: it frees itself when it expires
            logger.warning("actor limiter: releasing a slot failed (%r)", exc)

    async def _renew_slots(self) -> None:
        """Extend the held slots' leases while any is held (ends by itself when none is)."""
        while self._held:
            await asyncio.sleep(self._lease / 3)
            held = list(self._held)
            if not held:
                return
            try:
                await self._broker._execute(
                    "actor limiter",
                    self._broker._q["LIMITER_RENEW"],
                    self._actor,
                    held,
                    time.time() + self._lease,
                )
            except Exception as exc:
                logger.warning("actor limiter: renewing slots failed (%r); will retry", exc)

    async def close(self) -> None:
        """Stop renewing and wait for pending releases."""
        if self._renewal is not None:
            self._renewal.cancel()
            await await_quietly(self._renewal)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
