"""Cancellations, per-actor limits and the worker registry of brokers that keep them in their
process unless paired with a `RedisSharedState` (RabbitMQ and Kafka)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from repid.lifecycle import STALE_AFTER, ActorLimiter, RateLimit, WorkerInfo

if TYPE_CHECKING:
    from repid.state.redis import RedisSharedState


class LocalOrShared:
    """Mixed into a broker: each call goes to the shared state when there is one, else it
    acts on this process's own bookkeeping (`_init_local_or_shared` sets it up)."""

    _state: RedisSharedState | None

    def _init_local_or_shared(self, state: RedisSharedState | None) -> None:
        self._state = state
        self._cancel_requests: set[str] = set()
        self._workers: dict[str, WorkerInfo] = {}

    async def cancelled_ids(self, running: Iterable[str]) -> set[str]:
        """Which of these running job ids have a cancellation request (made in this process,
        or with shared state in any process)."""
        requests = self._cancel_requests
        if self._state is not None:
            ids = list(running)
            found = self._state.cancelled(ids)
            return found | {id_ for id_ in ids if id_ in requests} if requests else found
        return {id_ for id_ in running if id_ in requests} if requests else set()

    def _job_over(self, id_: str) -> None:
        """The broker settled job `id_` for good (acked or dead-lettered): a cancellation
        request made while it ran must not cancel a later job that reuses the id."""
        if self._cancel_requests:
            self._cancel_requests.discard(id_)

    async def cancel_finished(self, id_: str) -> None:
        self._cancel_requests.discard(id_)
        if self._state is not None:
            await self._state.forget_cancel(id_)

    def actor_limiter(
        self, actor: str, max_concurrency: int | None, rate_limit: RateLimit | None
    ) -> ActorLimiter:
        """The limiter of `actor`: shared by every worker through the shared state, else a new
        one per call (per worker)."""
        if self._state is not None:
            return self._state.actor_limiter(actor, max_concurrency, rate_limit)
        return ActorLimiter(max_concurrency, rate_limit)

    async def heartbeat(self, info: WorkerInfo) -> None:
        """Record a live worker (in the shared state, else in this process)."""
        if self._state is not None:
            await self._state.heartbeat(info)
            return
        self._workers[info.id] = info

    async def unregister_worker(self, worker_id: str) -> None:
        if self._state is not None:
            await self._state.unregister_worker(worker_id)
            return
        self._workers.pop(worker_id, None)

    async def live_workers(self, stale_after: float = STALE_AFTER) -> list[WorkerInfo]:
        """Workers heard from within `stale_after` seconds: of every process with shared
        state, else of this process."""
        if self._state is not None:
            return await self._state.live_workers(stale_after)
        now = time.time()
        for worker_id, info in list(self._workers.items()):
            if now - info.last_seen > stale_after:
                del self._workers[worker_id]
        return sorted(self._workers.values(), key=lambda info: info.started_at)
