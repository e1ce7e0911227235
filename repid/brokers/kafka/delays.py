"""Delayed records of a consumer: held in memory until due, then published to the queue's
topic; one due more than `HOLD_WINDOW` later is re-appended to the delay topic instead."""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable

from repid.brokers.base import Delivery
from repid.brokers.kafka.offsets import PartitionOffsets
from repid.brokers.kafka.records import Removal, matches

__all__ = ["HOLD_WINDOW", "DelayedRecords"]

logger = logging.getLogger("repid.brokers.kafka")

HOLD_WINDOW = 60.0
"""A delayed record due later than this is re-appended to the delay topic instead of being held
for longer, so that it never keeps the delay partition's commit behind for more than this."""

_seq = itertools.count()


class DelayedRecords:
    """The held records of one consumer and the timers that move them (`run` is its loop).

    Args:
        queue_name: the queue (for log messages).
        main: the queue's topic, where due records go.
        delayed: the delay topic, where records due later than `HOLD_WINDOW` go back.
        send: publishes a record value to a topic (returns once it is stored).
        ready: hands out a record of the queue's own topic that arrived early, once due.
    """

    def __init__(
        self,
        queue_name: str,
        main: str,
        delayed: str,
        send: Callable[[str, bytes], Awaitable[None]],
        ready: Callable[[PartitionOffsets, int, Delivery], None],
    ) -> None:
        self.queue_name = queue_name
        self.main = main
        self.delayed = delayed
        self._send = send
        self._ready = ready
        self.held: dict[tuple[PartitionOffsets, int], tuple[Delivery, bytes]] = {}
        self._timers: list[tuple[float, int, PartitionOffsets, int]] = []
        self._moving: set[tuple[PartitionOffsets, int]] = set()
        """Records being moved now: a second timer of one of them (the record was held twice,
        e.g. fetched again after a rebalance) must not send it a second time."""
        self._changed = asyncio.Event()

    def hold(
        self,
        part: PartitionOffsets,
        offset: int,
        delivery: Delivery,
        value: bytes,
        due: float,
        now: float,
    ) -> None:
        """Keep a record not due yet until `due` (or `HOLD_WINDOW`, whichever is first)."""
        self.held[(part, offset)] = (delivery, value)
        action = min(due, now + HOLD_WINDOW)
        heapq.heappush(self._timers, (action, next(_seq), part, offset))
        self._changed.set()

    def drop_partitions(self, lost: set[int]) -> None:
        """Forget the records of the partitions whose `id()` is in `lost` (revoked)."""
        for key in [k for k in self.held if id(k[0]) in lost]:
            del self.held[key]

    def clear(self) -> None:
        self.held.clear()

    def apply_removal(self, removal: Removal, part: PartitionOffsets, offset: int) -> None:
        """A marker at `offset` of `part`: drop (and finish) the earlier records it removes."""
        for key, (delivery, _) in list(self.held.items()):
            if key[0] is part and key[1] < offset and matches(removal, delivery):
                del self.held[key]
                part.finish(key[1])

    async def run(self) -> None:
        """Move records when their timers fire, until cancelled."""
        while True:
            self._changed.clear()
            timers = self._timers
            wait = None
            now = time.time()
            actions: list[tuple[PartitionOffsets, int]] = []
            while timers and timers[0][0] <= now:
                _, _, part, offset = heapq.heappop(timers)
                key = (part, offset)
                if key in self.held and key not in self._moving and key not in actions:
                    actions.append(key)
            if actions:
                await asyncio.gather(*(self._release(p, o) for p, o in actions))
                continue
            if timers:
                wait = timers[0][0] - now
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), wait)

    async def _release(self, part: PartitionOffsets, offset: int) -> None:
        key = (part, offset)
        entry = self.held.get(key)
        if entry is None or key in self._moving:
            return
        self._moving.add(key)
        try:
            await self._move(part, offset, entry)
        finally:
            self._moving.discard(key)

    async def _move(
        self, part: PartitionOffsets, offset: int, entry: tuple[Delivery, bytes]
    ) -> None:
        delivery, value = entry
        due = delivery.parameters.not_before or 0.0
        if part.tp.topic == self.main and due <= time.time():
            # A record of the queue's own topic that arrived early (clock skew): run it now.
            del self.held[(part, offset)]
            self._ready(part, offset, delivery)
            return
        destination = self.main if due <= time.time() else self.delayed
        generation = part.generation
        try:
            await self._send(destination, value)
        except Exception:
            logger.exception("moving a delayed message of %s failed; retrying", self.queue_name)
            heapq.heappush(self._timers, (time.time() + 1.0, next(_seq), part, offset))
            return
        if self.held.pop((part, offset), None) is not None and generation == part.generation:
            part.finish(offset)
