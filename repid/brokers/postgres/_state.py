"""Cancellations, the worker registry and per-actor limits of the PostgreSQL broker.

Cancel requests, live workers and per-actor limits are rows in the broker's tables, shared by
every process using them.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import asyncpg
from pydantic_core import from_json, to_json

from repid.brokers.postgres._limiter import PostgresActorLimiter
from repid.errors import QueueNotDeclaredError
from repid.lifecycle import STALE_AFTER, ActorLimiter, RateLimit, WorkerInfo

__all__ = ["StateMixin"]

logger = logging.getLogger("repid.brokers.postgres")


def _record(info: WorkerInfo) -> str:
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
    ).decode()


class StateMixin:
    """Mixed into `PostgresMessageBroker` (which provides `_q` and the query helpers)."""

    _q: dict[str, str]
    _fetch: Callable[..., Awaitable[list[Any]]]
    _fetchval: Callable[..., Awaitable[Any]]
    _execute: Callable[..., Awaitable[str]]
    link: Any

    lease_duration: float
    _listener: Any

    def _init_state(self) -> None:
        self.owner = uuid.uuid4().hex
        """This broker object in the worker registry and in the rows it claims."""
        self.heartbeating = False
        """A worker heartbeat went through this broker: its claims carry `owner`."""
        self._session_updates: set[asyncio.Task[None]] = set()
        self._limiters: dict[tuple[str, int | None, RateLimit | None], PostgresActorLimiter] = {}

    async def cancel(self, queue_name: str, id_: str) -> str | None:
        """Cancel job `id_`: remove it if waiting ("dequeued"), flag it if running ("requested").

        None when no pending or running message has that id.
        """
        q = self._q

        async def run(conn: asyncpg.Connection) -> str | None:
            async with conn.transaction():
                declared = await conn.fetchval(q["IS_DECLARED"], queue_name)
                if not declared:
                    raise QueueNotDeclaredError(queue_name)
                if await conn.fetchval(q["CANCEL_WAITING"], queue_name, id_):
                    return "dequeued"
                if await conn.fetchval(q["CANCEL_RUNNING"], queue_name, id_):
                    return "requested"
                return None

        result: str | None = await self.link.run("cancel", run)
        return result

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a pending cancellation request."""
        ids = list(running)
        if not ids:
            return set()
        rows = await self._fetch("cancel lookup", self._q["CANCELLED_AMONG"], ids)
        return {row[0] for row in rows}

    async def cancel_finished(self, id_: str) -> None:
        """The worker has cancelled job `id_`: forget the request."""
        await self._execute("cancel done", self._q["CANCEL_FORGET"], id_)

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> ActorLimiter:
        """The limiter of `actor`: its slots and rate window are rows shared by every worker
        using these tables (a slot is a lease renewed while its job runs)."""
        key = (actor, max_concurrency, rate_limit)
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = PostgresActorLimiter(
                self, actor, max_concurrency, rate_limit, self.lease_duration
            )
        return limiter

    async def _close_limiters(self) -> None:
        for limiter in self._limiters.values():
            await limiter.close()

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record that a worker is alive (called when it starts and every few seconds)."""
        pid, start = self._listener.session or (None, None)
        await self._execute(
            "heartbeat",
            self._q["HEARTBEAT"],
            info.id,
            _record(info),
            info.last_seen,
            self.owner,
            pid,
            start,
        )
        self.heartbeating = True

    def _new_session(self, session: tuple[int, Any]) -> None:
        """The LISTEN connection was (re)opened: the registry rows name its new session."""
        if not self.heartbeating:
            return

        async def update() -> None:
            await self._execute("worker session", self._q["SESSION"], self.owner, *session)

        task = asyncio.get_running_loop().create_task(update())
        self._session_updates.add(task)
        task.add_done_callback(self._session_updated)

    def _session_updated(self, task: asyncio.Task[None]) -> None:
        self._session_updates.discard(task)
        if not task.cancelled() and task.exception() is not None:  # the next heartbeat does it
            logger.debug("updating the worker session failed: %r", task.exception())

    async def unregister_worker(self, worker_id: str) -> None:
        await self._execute("unregister worker", self._q["UNREGISTER"], worker_id)

    async def live_workers(self, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
        """Workers heard from within `stale_after` seconds; staler ones are forgotten."""
        since = time.time() - stale_after
        await self._execute("forget workers", self._q["FORGET_STALE_WORKERS"], since)
        rows = await self._fetch("live workers", self._q["LIVE_WORKERS"], since)
        workers = []
        for (raw,) in rows:
            obj = from_json(raw)
            obj["queues"] = tuple(obj["queues"])
            workers.append(WorkerInfo(**obj))
        return sorted(workers, key=lambda info: info.started_at)
