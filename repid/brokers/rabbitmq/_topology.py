"""What repid creates on RabbitMQ per queue `q`: `q`, `q:dead` and the TTL delay queues
`q:delay:<ms>` that dead-letter back into `q`; quorum queues (no priorities in 3.x) add `q:high`
and `q:low`, and a consumer sends a due message from `q` on to the queue of its priority.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiormq

from repid.data import Parameters
from repid.errors import QueueNotDeclaredError

__all__ = ["DELAY_LEVELS_MS", "MAX_PRIORITY", "QUEUE_TYPES", "Topology", "declared"]

DELAY_LEVELS_MS: tuple[int, ...] = tuple(2**k for k in range(6, 32))
"""TTLs of the delay queues (64 ms to ~24.9 days). A delay hops through the largest level not
longer than what remains, so it is never early and different delays never block each other."""
MAX_PRIORITY = 2
_BIND_ATTEMPTS = 5
"""Declarations of the dead-letter exchange and binding, when other processes keep deleting it."""
_QUEUE_VERSION = {"x-queue-version": 2}
"""Classic queues v2 (RabbitMQ 3.10+, the only kind in 4.x): faster persistent confirms."""

QUEUE_TYPES = ("classic", "quorum")
_BAND_SUFFIX = (":high", "", ":low")
"""Quorum layout: the queue of each priority (HIGH=0, MEDIUM=1, LOW=2)."""

Admin = Callable[..., Awaitable[Any]]
"""`admin(operation, *args, **kwargs)`: one RPC on the broker's admin channel, retried."""


@contextlib.contextmanager
def declared(queue_name: str) -> Iterator[None]:
    """RabbitMQ's "no such queue" is repid's `QueueNotDeclaredError`."""
    try:
        yield
    except aiormq.exceptions.ChannelNotFoundEntity:
        raise QueueNotDeclaredError(queue_name) from None


class Topology:
    """The RabbitMQ queues and exchanges of the repid queues of one broker object."""

    def __init__(
        self,
        admin: Admin,
        prefix: str,
        hold_locally: float,
        *,
        queue_type: str = "classic",
        delivery_limit: int | None = None,
    ) -> None:
        if queue_type not in QUEUE_TYPES:
            raise ValueError(f"queue_type must be 'classic' or 'quorum', not {queue_type!r}")
        if delivery_limit is not None and delivery_limit < 1:
            raise ValueError(f"delivery_limit must be at least 1 (or None), not {delivery_limit!r}")
        self._admin = admin
        self.prefix = prefix
        self.quorum = queue_type == "quorum"
        self.delivery_limit = delivery_limit
        self.hold_locally = hold_locally
        """A message due within this many seconds goes to its queue (the consumer holds it)."""
        self.dead_letter_exchange = f"{prefix}repid.dead"
        self.delay_declared: set[tuple[str, int]] = set()
        self.declared: set[str] = set()

    def name(self, queue: str) -> str:
        return self.prefix + queue

    def bands(self) -> range:
        """The priority bands that have queues of their own: all three for quorum queues."""
        return range(len(_BAND_SUFFIX)) if self.quorum else range(1, 2)

    def band_name(self, queue: str, band: int) -> str:
        """The server queue holding ready messages of priority `band` (quorum), or the queue."""
        return self.prefix + queue + (_BAND_SUFFIX[band] if self.quorum else "")

    def sources(self, queue: str) -> list[str]:
        """The server queues a worker consumes, highest priority first."""
        return [self.band_name(queue, band) for band in self.bands()]

    def delay_name(self, queue: str, level: int) -> str:
        return f"{self.prefix}{queue}:delay:{level}"

    def _arguments(self, **extra: Any) -> dict[str, Any]:
        if not self.quorum:
            return {**_QUEUE_VERSION, **extra}
        extra.pop("x-max-priority", None)
        if "x-dead-letter-exchange" in extra:
            # At-least-once dead-lettering (3.10+) needs `reject-publish` overflow.
            extra["x-dead-letter-strategy"] = "at-least-once"
            extra["x-overflow"] = "reject-publish"
        return {"x-queue-type": "quorum", **extra}

    async def declare(self, queue_name: str) -> None:
        name = self.name(queue_name)
        dead = name + ":dead"
        for attempt in range(_BIND_ATTEMPTS):
            # auto_delete: the exchange goes away with the last dead-letter queue bound to it.
            await self._admin(
                "exchange_declare",
                exchange=self.dead_letter_exchange,
                exchange_type="direct",
                durable=True,
                auto_delete=True,
            )
            await self._admin("queue_declare", dead, durable=True, arguments=self._arguments())
            try:
                await self._admin("queue_bind", dead, self.dead_letter_exchange, routing_key=dead)
                break
            except aiormq.exceptions.ChannelNotFoundEntity:
                # Another process deleted the last queue bound to the exchange between our
                # declare and bind (same prefix): the exchange went with it. Declare it again.
                if attempt == _BIND_ATTEMPTS - 1:
                    raise
        # The medium band (the queue itself) last: `check()` finds a queue fully declared.
        for band in sorted(self.bands(), key=lambda b: b == 1):
            await self._admin(
                "queue_declare",
                self.band_name(queue_name, band),
                durable=True,
                arguments=self.band_arguments(queue_name),
            )
        self.declared.add(queue_name)

    def band_arguments(self, queue_name: str) -> dict[str, Any]:
        """The declaration arguments of the queue (of each priority band, for quorum)."""
        limit = (
            {}
            if self.delivery_limit is None or not self.quorum
            else {"x-delivery-limit": self.delivery_limit}
        )
        return self._arguments(
            **{
                "x-max-priority": MAX_PRIORITY,
                "x-dead-letter-exchange": self.dead_letter_exchange,
                "x-dead-letter-routing-key": self.name(queue_name) + ":dead",
                **limit,
            }
        )

    async def check(self, queue_name: str) -> None:
        """Raise `QueueNotDeclaredError` unless the queue exists on the server."""
        with declared(queue_name):
            await self._admin("queue_declare", self.name(queue_name), passive=True)

    async def purge_or_delete(self, queue_name: str, *, delete: bool) -> None:
        """Empty (or delete) the queue and its dead part; its delay queues are deleted."""
        name = self.name(queue_name)
        for level in DELAY_LEVELS_MS:
            await self._admin("queue_delete", self.delay_name(queue_name, level))
        self.delay_declared = {k for k in self.delay_declared if k[0] != queue_name}
        for target in (*self.sources(queue_name), name + ":dead"):
            if delete:
                await self._admin("queue_delete", target)
            else:
                with declared(queue_name):
                    await self._admin("queue_purge", target)
        if delete:
            self.declared.discard(queue_name)

    async def counts(self, queue_name: str) -> tuple[int, int, int]:
        """(ready, delayed, dead) messages of the queue."""
        ready = 0
        with declared(queue_name):
            for source in self.sources(queue_name):
                reply = await self._admin("queue_declare", source, passive=True)
                ready += reply.message_count or 0
        dead = await self._admin("queue_declare", self.name(queue_name) + ":dead", passive=True)
        delayed = 0
        for name in await self.delay_queues(queue_name):
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                reply = await self._admin("queue_declare", name, passive=True)
                delayed += reply.message_count or 0
        return ready, delayed, dead.message_count or 0

    async def delay_queues(self, queue_name: str) -> list[str]:
        """The delay queues of `queue_name` that exist on the server, shortest delay first."""
        found = []
        for level in DELAY_LEVELS_MS:
            name = self.delay_name(queue_name, level)
            if (queue_name, level) in self.delay_declared:
                found.append(name)
                continue
            with contextlib.suppress(aiormq.exceptions.ChannelNotFoundEntity):
                await self._admin("queue_declare", name, passive=True)
                found.append(name)
        return found

    async def declare_delay(self, queue_name: str, level: int) -> None:
        await self.check(queue_name)  # never delay into a queue that does not exist
        await self._admin(
            "queue_declare",
            self.delay_name(queue_name, level),
            durable=True,
            arguments=self._arguments(
                **{
                    "x-message-ttl": level,
                    "x-dead-letter-exchange": "",
                    "x-dead-letter-routing-key": self.name(queue_name),
                }
            ),
        )
        self.delay_declared.add((queue_name, level))

    def route(
        self, queue_name: str, params: Parameters, priority: int = 1
    ) -> tuple[str, int | None]:
        """Where a message goes now: its queue (of its priority, for quorum queues), or the
        delay queue of the right level (which dead-letters into the queue)."""
        not_before = params.not_before
        if not_before is not None:
            remaining_ms = (not_before - time.time()) * 1000
            if remaining_ms > self.hold_locally * 1000:
                level = DELAY_LEVELS_MS[0]
                for candidate in DELAY_LEVELS_MS:
                    if candidate > remaining_ms:
                        break
                    level = candidate
                return self.delay_name(queue_name, level), level
        return self.band_name(queue_name, priority), None
