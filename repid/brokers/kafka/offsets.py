"""The offsets of one assigned partition: what is fetched, what is finished, and the point
up to which a commit may go (the first offset not finished yet)."""

from __future__ import annotations

import asyncio
from collections import deque

from aiokafka import TopicPartition

__all__ = ["PartitionOffsets"]


class PartitionOffsets:
    """Offsets of one assigned partition, and the messages of it that run now.

    `generation` moves on when the queue is flushed or deleted (what was fetched before turns
    stale); `revoked` is set when the partition goes to another member.
    """

    __slots__ = (
        "committed",
        "done",
        "drained",
        "fetched_to",
        "generation",
        "pending",
        "revoked",
        "running",
        "tp",
    )

    def __init__(self, tp: TopicPartition) -> None:
        self.tp = tp
        self.pending: deque[int] = deque()
        self.done: set[int] = set()
        self.fetched_to: int | None = None
        self.committed = -1
        self.generation = 0
        self.revoked = False
        self.running = 0
        self.drained = asyncio.Event()
        self.drained.set()

    def finish(self, offset: int) -> None:
        """`offset` is finished (settled, removed or moved elsewhere)."""
        pending = self.pending
        if pending and pending[0] == offset:
            pending.popleft()
            done = self.done
            while pending and pending[0] in done:
                done.discard(pending.popleft())
        else:
            self.done.add(offset)

    def commit_point(self) -> int | None:
        """The offset a commit may go up to (None: nothing fetched yet)."""
        return self.pending[0] if self.pending else self.fetched_to
