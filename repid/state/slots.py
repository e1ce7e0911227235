"""Holding per-actor concurrency slots that live in a shared store as leases: take one (waiting
as long as the store says), renew the held ones while any is held, release in the background.
The store's three operations are coroutines given by the broker; the bookkeeping is here once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable

from repid._cancel import await_quietly

__all__ = ["SlotHolder"]

logger = logging.getLogger("repid.state")


class SlotHolder:
    """The slots one limiter holds in a shared store, each a lease of `lease_duration` seconds.

    Args:
        acquire: `acquire(token)` tries to take a slot (and a start in the rate window) under
            `token`; returns 0 when taken, else the seconds to wait before trying again.
        renew: `renew(tokens)` extends the leases of the held slots.
        release: `release(token)` frees one slot.
        lease_duration: seconds a slot stays taken without renewal (renewed every third of it).
        label: names the store in log lines ("PostgreSQL", "SQLite").
    """

    def __init__(
        self,
        *,
        acquire: Callable[[str], Awaitable[float]],
        renew: Callable[[list[str]], Awaitable[None]],
        release: Callable[[str], Awaitable[object]],
        lease_duration: float,
        label: str,
    ) -> None:
        self._acquire = acquire
        self._renew = renew
        self._release = release
        self._lease = lease_duration
        self._label = label
        self.held: list[str] = []
        self._renewal: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    async def acquire(self, *, hold: bool) -> None:
        """Wait until the store grants a slot; keep (and renew) its token when `hold`.

        A failing store is retried with backoff: the job keeps waiting, it is never dropped.
        """
        token = uuid.uuid4().hex
        backoff = 0.05
        while True:
            try:
                wait = await self._acquire(token)
            except Exception as exc:
                logger.warning("actor limiter: %s failed (%r); retrying", self._label, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if wait <= 0:
                break
            await asyncio.sleep(wait)  # another process frees the slot: nothing to wait on
        if hold:
            self.held.append(token)
            if self._renewal is None or self._renewal.done():
                self._renewal = asyncio.create_task(self._renew_held())

    def release(self) -> None:
        """Free the oldest held slot in the background (no-op when none is held)."""
        if not self.held:
            return
        token = self.held.pop(0)
        task = asyncio.get_running_loop().create_task(self._release_one(token))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release_one(self, token: str) -> None:
        try:
            await self._release(token)
        except Exception as exc:  # the slot is a lease: it frees itself when it expires
            logger.warning("actor limiter: releasing a slot failed (%r)", exc)

    async def _renew_held(self) -> None:
        """Extend the held slots' leases while any is held (ends by itself when none is)."""
        while self.held:
            await asyncio.sleep(self._lease / 3)
            held = list(self.held)
            if not held:
                return
            try:
                await self._renew(held)
            except Exception as exc:
                logger.warning("actor limiter: renewing slots failed (%r); will retry", exc)

    async def close(self) -> None:
        """Stop renewing and wait for pending releases."""
        renewal, self._renewal = self._renewal, None
        if renewal is not None:
            renewal.cancel()
            await await_quietly(renewal)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)
