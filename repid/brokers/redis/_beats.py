"""Consumer heartbeats of the Redis broker: every live consumer's name is stamped (server time)
in its queue's heartbeat zset, so another worker's fetch claims a dead consumer's entries at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable

from repid._cancel import await_quietly
from repid.brokers.redis._link import SCRIPTS, Link

__all__ = ["ConsumerBeats"]

logger = logging.getLogger("repid.brokers.redis")


class ConsumerBeats:
    """The heartbeat loop of one broker's consumers: one `beat` script call per queue and beat.

    A consumer is beaten for from its `start()` until it is finished and holds nothing.
    """

    def __init__(self, link: Link, interval: float) -> None:
        self._link = link
        self.interval = interval
        self._consumers: dict[Hashable, tuple[bytes, bytes]] = {}
        """consumer -> (its queue's heartbeat key, its name)."""
        self._task: asyncio.Task[None] | None = None

    async def add(self, consumer: Hashable, key: bytes, name: bytes) -> None:
        """Beat for `consumer` from now on (the first beat is written before this returns)."""
        self._consumers[consumer] = (key, name)
        await self._link.script(SCRIPTS["beat"], [key], [name])
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="repid-redis-beats")

    def remove(self, consumer: Hashable) -> None:
        """Stop beating for `consumer` (its record is removed by the `finish` script)."""
        self._consumers.pop(consumer, None)

    async def close(self) -> None:
        """Stop the loop (the broker disconnects)."""
        task, self._task = self._task, None
        self._consumers.clear()
        if task is not None:
            task.cancel()
            await await_quietly(task)

    async def _run(self) -> None:
        while self._consumers:
            await asyncio.sleep(self.interval)
            by_key: dict[bytes, list[bytes]] = {}
            for key, name in self._consumers.values():
                by_key.setdefault(key, []).append(name)
            try:  # issued together: one pipelined write
                await asyncio.gather(
                    *(
                        self._link.script(
                            SCRIPTS["beat"], [key], list(names), timeout=self.interval
                        )
                        for key, names in by_key.items()
                    )
                )
            except Exception as exc:  # Redis down: the next beat tries again
                logger.debug("consumer heartbeat failed: %r", exc)
