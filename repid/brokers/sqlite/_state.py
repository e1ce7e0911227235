"""Cancellation requests, the worker registry and per-actor limits in the SQLite file, so they
work across every process that opens it."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Iterable

from repid._cancel import await_quietly
from repid.brokers.sqlite import _sql
from repid.brokers.sqlite._db import Database
from repid.lifecycle import STALE_AFTER, ActorLimiter, RateLimit, WorkerInfo

__all__ = ["SharedStateInFile", "SqliteActorLimiter"]

logger = logging.getLogger("repid.brokers.sqlite")


def _renew(conn: sqlite3.Connection, rows: list[tuple[float, str]]) -> None:
    conn.executemany("UPDATE repid_limit_slots SET expires = ? WHERE token = ?", rows)


class SqliteActorLimiter(ActorLimiter):
    """`ActorLimiter` whose slots and rate window are rows of the file (never drops a job).

    A concurrency slot is a lease renewed while its job runs, so the slots of a worker that
    died free themselves after `lease_duration`.
    """

    def __init__(
        self,
        db: Database,
        actor: str,
        max_concurrency: int | None,
        rate_limit: RateLimit | None,
        lease_duration: float,
    ) -> None:
        super().__init__(max_concurrency, rate_limit)
        self._db = db
        self._actor = actor
        self._lease = lease_duration
        self._held: list[str] = []
        self._renewal: asyncio.Task[None] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    def _try(self, conn: sqlite3.Connection, token: str) -> float:
        """Take a slot and a start in the rate window, or say how long to wait (seconds)."""
        now = time.time()
        actor = self._actor
        if self.max_concurrency:
            conn.execute(
                "DELETE FROM repid_limit_slots WHERE actor = ? AND expires <= ?", (actor, now)
            )
            (held,) = conn.execute(
                "SELECT COUNT(*) FROM repid_limit_slots WHERE actor = ?", (actor,)
            ).fetchone()
            if held >= self.max_concurrency:
                return 0.05
        if self.rate_limit is not None:
            window = self.rate_limit.per.total_seconds()
            conn.execute(
                "DELETE FROM repid_limit_starts WHERE actor = ? AND at <= ?", (actor, now - window)
            )
            count, oldest = conn.execute(
                "SELECT COUNT(*), MIN(at) FROM repid_limit_starts WHERE actor = ?", (actor,)
            ).fetchone()
            if count >= self.rate_limit.limit:
                return max(0.001, float(oldest) + window - now)
            conn.execute("INSERT INTO repid_limit_starts (actor, at) VALUES (?, ?)", (actor, now))
        if self.max_concurrency:
            conn.execute(
                "INSERT INTO repid_limit_slots (token, actor, expires) VALUES (?, ?, ?)",
                (token, actor, now + self._lease),
            )
        return 0.0

    async def acquire(self) -> None:
        token = uuid.uuid4().hex
        backoff = 0.05
        while True:
            try:
                wait = await self._db.run(lambda conn: self._try(conn, token))
            except Exception as exc:  # keep the job waiting; never drop it
                logger.warning("actor limiter: SQLite failed (%r); retrying", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
                continue
            if wait == 0:
                break
            await asyncio.sleep(wait)  # another process frees the slot: nothing to wait on
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
            await self._db.run(
                lambda conn: conn.execute("DELETE FROM repid_limit_slots WHERE token = ?", (token,))
            )
        except Exception as exc:  # the slot is a lease: it frees itself when it expires
            logger.warning("actor limiter: releasing a slot failed (%r)", exc)

    async def _renew_slots(self) -> None:
        while self._held:
            await asyncio.sleep(self._lease / 3)
            expiry = time.time() + self._lease
            rows = [(expiry, token) for token in self._held]
            try:
                await self._db.run(functools.partial(_renew, rows=rows))
            except Exception as exc:
                logger.warning("actor limiter: renewing slots failed (%r); will retry", exc)

    async def close(self) -> None:
        """Stop renewing and wait for pending releases."""
        if self._renewal is not None:
            self._renewal.cancel()
            await await_quietly(self._renewal)
        if self._releases:
            await asyncio.gather(*self._releases, return_exceptions=True)


class SharedStateInFile:
    """Mixed into the broker: cancellation, live workers and actor limits in its file."""

    db: Database
    lease_duration: float
    _limiters: dict[str, SqliteActorLimiter]

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Cancel job `id_`: remove it if waiting ("dequeued"), flag it if running ("requested").

        None when no pending or running message has that id.
        """
        return await self.db.run(lambda conn: _sql.cancel(conn, queue_name, id_))

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a cancellation request (from any process)."""
        ids = list(running)
        if not ids:
            return set()
        return await self.db.run(lambda conn: _sql.cancelled(conn, ids))

    async def cancel_finished(self, id_: str) -> None:
        """The worker has cancelled job `id_`: forget the request."""
        await self.db.run(
            lambda conn: conn.execute("DELETE FROM repid_cancels WHERE id = ?", (id_,))
        )

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> SqliteActorLimiter:
        """The limiter of `actor`, shared through the file by every worker using it."""
        limiter = self._limiters.get(actor)
        if (
            limiter is None
            or limiter.max_concurrency != max_concurrency
            or limiter.rate_limit != rate_limit
        ):
            limiter = SqliteActorLimiter(
                self.db, actor, max_concurrency, rate_limit, self.lease_duration
            )
            self._limiters[actor] = limiter
        return limiter

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record that worker `info.id` is alive (listed by `live_workers`)."""
        record = dataclasses.asdict(info)
        record["queues"] = list(info.queues)
        text = json.dumps(record)
        await self.db.run(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO repid_workers (id, record, last_seen) VALUES (?, ?, ?)",
                (info.id, text, info.last_seen),
            )
        )

    async def unregister_worker(self, worker_id: str) -> None:
        await self.db.run(
            lambda conn: conn.execute("DELETE FROM repid_workers WHERE id = ?", (worker_id,))
        )

    async def live_workers(self, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
        """Workers heard from within `stale_after` seconds; staler ones are forgotten."""
        oldest = time.time() - stale_after

        def read(conn: sqlite3.Connection) -> list[str]:
            conn.execute("DELETE FROM repid_workers WHERE last_seen < ?", (oldest,))
            return [r for (r,) in conn.execute("SELECT record FROM repid_workers")]

        workers = []
        for text in await self.db.run(read):
            obj = json.loads(text)
            obj["queues"] = tuple(obj["queues"])
            workers.append(WorkerInfo(**obj))
        return sorted(workers, key=lambda info: info.started_at)
