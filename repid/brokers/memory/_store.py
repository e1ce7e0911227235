"""The in-memory broker's storage: a queue's ready, delayed, in-flight and dead messages."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Protocol

from repid.brokers.base import Delivery
from repid.data import PRIORITY_COUNT, MessageCategory, Parameters, RoutingKey


class Holder(Protocol):
    """The consumer a lease belongs to: told when one of its deliveries is settled."""

    def _settled(self) -> None: ...


_Entry = Delivery
"""A stored message is also the delivery handed out: one immutable object per message.

Its `handle` is a sequence number unique to that object. A message given back to the queue
(lease expiry, reject) is stored as a new entry with a new handle, so settlements by a stale
holder of the old delivery find nothing and return False.
"""


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


class _Lease:
    """Ownership of one handed-out entry (only in-flight messages have one)."""

    __slots__ = ("consumer", "deadline", "entry")

    def __init__(self, entry: _Entry, deadline: float, consumer: Holder | None) -> None:
        self.entry = entry
        self.deadline = deadline
        self.consumer = consumer


def _entry(
    key: RoutingKey,
    payload: str,
    parameters: Parameters,
    seq: int,
    raw: bytes | None = None,
    decode_error: str | None = None,
) -> _Entry:
    # tuple.__new__ skips the named tuple's Python-level constructor (hot path).
    return tuple.__new__(
        Delivery, (key, payload, parameters, seq, MessageCategory.NORMAL, raw, decode_error, False)
    )


def _renewed(entry: _Entry, seq: int, *, redelivered: bool = False) -> _Entry:
    return entry._replace(handle=seq, redelivered=redelivered)


class _MemoryQueue:
    __slots__ = (
        "dead",
        "delayed",
        "inflight",
        "name",
        "next_sweep",
        "pending_ids",
        "ready",
        "timer",
        "waiters",
    )

    def __init__(self, name: str) -> None:
        self.name = name
        self.ready: tuple[deque[_Entry], ...] = tuple(deque() for _ in range(PRIORITY_COUNT))
        self.delayed: list[tuple[float, int, _Entry]] = []
        self.dead: dict[int, _Entry] = {}
        self.inflight: dict[int, _Lease] = {}
        self.pending_ids: dict[str, int] = {}
        self.waiters: deque[asyncio.Future[None]] = deque()
        self.timer: asyncio.TimerHandle | None = None
        self.next_sweep = 0.0

    def ready_count(self) -> int:
        return sum(len(d) for d in self.ready)

    def wake_one(self) -> None:
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def wake_all(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
