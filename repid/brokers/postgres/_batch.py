"""Calls made in the same event-loop step, sent as one statement: concurrent enqueues become one
multi-row INSERT (one commit, one WAL flush), concurrent acks one DELETE."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["Coalescer"]

_T = TypeVar("_T")
_R = TypeVar("_R")


class _Batch(Generic[_T, _R]):
    __slots__ = ("future", "items")

    def __init__(self, future: asyncio.Future[_R]) -> None:
        self.future = future
        self.items: list[_T] = []


class Coalescer(Generic[_T, _R]):
    """`await submit(item)` returns `flush(items)` of every item submitted in the same loop step
    (at most `max_batch`); a failure of `flush` is raised to each submitter."""

    def __init__(self, flush: Callable[[list[_T]], Awaitable[_R]], max_batch: int = 500) -> None:
        self._flush = flush
        self._max_batch = max_batch
        self._batch: _Batch[_T, _R] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: _T) -> _R:
        batch = self._batch
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = self._batch = _Batch(loop.create_future())
            loop.call_soon(self._send, batch)
        batch.items.append(item)
        if len(batch.items) >= self._max_batch:
            self._send(batch)
        return await asyncio.shield(batch.future)

    def _send(self, batch: _Batch[_T, _R]) -> None:
        if self._batch is not batch:
            return  # already sent (it filled up)
        self._batch = None
        task = asyncio.get_running_loop().create_task(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: _Batch[_T, _R]) -> None:
        try:
            result = await self._flush(batch.items)
        except BaseException as exc:
            batch.future.set_exception(exc)
            batch.future.exception()  # retrieved: every submitter gets it through shield
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        batch.future.set_result(result)

    async def close(self) -> None:
        """Wait for the batches being sent."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
