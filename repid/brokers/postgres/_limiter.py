"""Per-actor concurrency and rate limits shared by every worker through PostgreSQL.

A concurrency slot is a row with an expiry (a lease) renewed while its job runs, so the slots of
a worker that died free themselves; run starts are rows kept for the rate window. One function
call (`limiter_acquire`, under an advisory lock per actor) checks and takes both.
"""

from __future__ import annotations

import time
from typing import Any

from repid.lifecycle import ActorLimiter, RateLimit
from repid.state.slots import SlotHolder

__all__ = ["PostgresActorLimiter"]


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
        self._slots = SlotHolder(
            acquire=self._try,
            renew=self._renew,
            release=self._release,
            lease_duration=lease_duration,
            label="PostgreSQL",
        )

    async def _try(self, token: str) -> float:
        window = 0.0 if self.rate_limit is None else self.rate_limit.per.total_seconds()
        rate = 0 if self.rate_limit is None else self.rate_limit.limit
        wait = await self._broker._fetchval(
            "actor limiter",
            self._broker._q["LIMITER_ACQUIRE"],
            self._actor,
            token,
            time.time(),
            self.max_concurrency or 0,
            self._lease,
            rate,
            window,
        )
        return float(wait)

    async def _renew(self, held: list[str]) -> None:
        await self._broker._execute(
            "actor limiter",
            self._broker._q["LIMITER_RENEW"],
            self._actor,
            held,
            time.time() + self._lease,
        )

    async def _release(self, token: str) -> None:
        await self._broker._execute(
            "actor limiter", self._broker._q["LIMITER_RELEASE"], self._actor, token
        )

    async def acquire(self) -> None:
        await self._slots.acquire(hold=bool(self.max_concurrency))

    def release(self) -> None:
        if self.max_concurrency:
            self._slots.release()

    async def close(self) -> None:
        """Stop renewing and wait for pending releases."""
        await self._slots.close()
