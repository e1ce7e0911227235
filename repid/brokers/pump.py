"""`PumpConsumer`: the consumer base of the brokers whose deliveries come from one background
claim loop (PostgreSQL, SQLite): `consume()`, the hand-out under the backpressure limit and the
cancellation hand-back, once."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Any

from repid._cancel import await_quietly
from repid.brokers.base import BaseConsumer, Delivery
from repid.errors import ConsumerClosedError

__all__ = ["PumpConsumer"]


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class PumpConsumer(BaseConsumer):
    """A consumer fed by one background pump task: `consume()`, the hand-out under the
    backpressure limit and the cancellation hand-back, the same for every broker that uses it.

    Callers of `consume()` wait in a queue of futures; the broker's `_run_pump()` (started by
    the first waiter, ending by itself when there is none) fills `_buffer` and calls
    `_distribute()`. A delivery handed to a caller that was cancelled at that moment goes back
    to the front of the buffer, so a cancelled `consume()` never takes a message. Handed-out
    deliveries are kept in `_outstanding` by `_key(delivery)` until the broker settles them.
    """

    queue: str
    max_unacked_messages: int | None
    _pump_name = "repid-pump"

    def _init_pump(self, queue: str, max_unacked_messages: int | None) -> None:
        self.queue = queue
        self.max_unacked_messages = max_unacked_messages
        self._outstanding: dict[Any, Delivery] = {}
        self._buffer: deque[Delivery] = deque()
        self._waiters: deque[asyncio.Future[Delivery]] = deque()
        self._changed: list[asyncio.Future[None]] = []
        self._pump: asyncio.Task[None] | None = None
        self._paused = False
        self._closed = False

    @staticmethod
    def _key(delivery: Delivery) -> Any:
        """What identifies a handed-out delivery in `_outstanding` (the handle's first item)."""
        return delivery.handle[0]

    async def _run_pump(self) -> None:
        """Fill `_buffer` and `_distribute()` while there are waiters; set `_pump` to None and
        return when there is none; on an error call `_pump_failed`."""
        raise NotImplementedError

    async def pause(self) -> None:
        self._paused = True

    async def unpause(self) -> None:
        self._paused = False
        self.poke()

    def poke(self) -> None:
        """Wake every wait for a change (a settlement, a notification, an unpause)."""
        changed, self._changed = self._changed, []
        for fut in changed:
            if not fut.done():
                fut.set_result(None)

    def _room(self) -> int | None:
        """How many more deliveries may be claimed (None: no limit)."""
        limit = self.max_unacked_messages
        if limit is None:
            return None
        return limit - len(self._outstanding) - len(self._buffer)

    def _hand_out(self, delivery: Delivery) -> Delivery:
        self._outstanding[self._key(delivery)] = delivery
        return delivery

    async def _consume_ready(self) -> Delivery:
        """Wait for and hand out the next delivery of the pump (the `consume()` of the ready
        part)."""
        if self._closed:
            raise ConsumerClosedError(f"consumer of {self.queue!r} has finished")
        limit = self.max_unacked_messages
        if (
            self._buffer
            and not self._waiters
            and not self._paused
            and (limit is None or len(self._outstanding) < limit)
        ):
            return self._hand_out(self._buffer.popleft())
        fut: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        pump = self._pump
        if pump is None or pump.done():
            self._pump = asyncio.create_task(
                self._run_pump(), name=f"{self._pump_name}-{self.queue}"
            )
        else:
            self.poke()
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                delivery = fut.result()  # handed to us as we were cancelled: keep it for later
                self._outstanding.pop(self._key(delivery), None)
                self._buffer.appendleft(delivery)
                self._distribute()
            raise

    def _distribute(self) -> None:
        """Hand buffered deliveries to the waiters, within the backpressure limit."""
        limit = self.max_unacked_messages
        buffer, waiters, outstanding = self._buffer, self._waiters, self._outstanding
        while buffer and waiters and not self._paused:
            if limit is not None and len(outstanding) >= limit:
                return
            fut = waiters.popleft()
            if fut.done():
                continue
            delivery = buffer.popleft()
            outstanding[self._key(delivery)] = delivery
            fut.set_result(delivery)

    def _live_waiters(self) -> int:
        """Drop the waiters that gave up; the number left."""
        waiters = self._waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return len(waiters)

    async def _wait_change(self, timeout: float | None) -> None:
        """Until `poke()` or `timeout` seconds (None: no limit)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[None] = loop.create_future()
        self._changed.append(fut)
        handle = None if timeout is None else loop.call_later(timeout, _wake, fut)
        try:
            await fut
        finally:
            if handle is not None:
                handle.cancel()

    def _fail_waiters(self, exc: BaseException) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(exc)

    def _pump_failed(self, exc: Exception) -> None:
        """The pump stopped on `exc`: the waiters get it; the next `consume()` starts anew."""
        self._fail_waiters(exc)
        if self._pump is asyncio.current_task():
            self._pump = None

    async def _stop_pump(self) -> list[Delivery]:
        """Close: stop the pump, fail the waiters with `ConsumerClosedError`, and return the
        buffered deliveries nobody was handed (the broker gives them back to the queue)."""
        self._closed = True
        self.poke()
        pump, self._pump = self._pump, None
        if pump is not None:
            pump.cancel()
            await await_quietly(pump, Exception)
        self._fail_waiters(ConsumerClosedError(f"consumer of {self.queue!r} has finished"))
        unstarted, self._buffer = list(self._buffer), deque()
        return unstarted
