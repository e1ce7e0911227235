"""A read-only look into a queue of an in-memory broker (`repid_get_in_memory_queue`)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from repid.data import DeadLetterInfo, MessageCategory, Parameters, RoutingKey

if TYPE_CHECKING:
    from repid.brokers.memory import InMemoryMessageBroker
    from repid.brokers.memory._store import _Entry, _MemoryQueue

__all__ = ["InMemoryQueueView", "QueuedMessage"]

_NO_ARGS: Any = object()


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    """A snapshot of one message sitting in an in-memory queue.

    Attributes:
        key: routing key (`id_`, `topic` = actor name, `queue`, `priority`).
        payload: the raw payload (empty when the arguments live in the args bucket).
        parameters: execution parameters (retries, delay, result, dead-letter details...).
        category: the part of the queue it is in (NORMAL for ready and in-flight messages).
        args: the job's keyword arguments, decoded from the payload or the args bucket; None
            when the job had none (or its args bucket is gone).
    """

    key: RoutingKey
    payload: str
    parameters: Parameters
    category: MessageCategory
    args: dict[str, Any] | None

    @property
    def id_(self) -> str:
        """The message id (the job's `id_`, or a random one)."""
        return self.key.id_

    @property
    def actor(self) -> str:
        """The name of the actor the message is for (its routing key's topic)."""
        return self.key.topic

    @property
    def attempt(self) -> int:
        """1-based attempt number (2 after the first retry, ...)."""
        return self.parameters.attempt

    @property
    def dead_letter(self) -> DeadLetterInfo | None:
        """Why the message was dead-lettered (reason, error type/message, traceback)."""
        return self.parameters.dead_letter


class InMemoryQueueView:
    """A live, read-only view of a queue of an `InMemoryMessageBroker`.

    Every property reads the broker's current state (nothing is consumed or leased), so one view
    can be kept and re-read after more jobs are enqueued. Reading a queue that is not declared
    raises `QueueNotDeclaredError` (a `KeyError`).

    Args:
        broker: the in-memory broker (the raw one, not a middleware wrapper).
        name: the queue's name.
        args_loader: returns the JSON text stored in the args bucket under an id (or None);
            used to show `args` of messages whose arguments were bucketed.

    Example:
        ```python
        queue = repid_get_in_memory_queue("default")
        assert queue.counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
        assert queue.dead[0].dead_letter.error_type == "ZeroDivisionError"
        ```
    """

    def __init__(
        self,
        broker: InMemoryMessageBroker,
        name: str,
        args_loader: Callable[[str], str | None] | None = None,
    ) -> None:
        self.broker = broker
        self.name = name
        self._args_loader = args_loader

    def _queue(self) -> _MemoryQueue:
        return self.broker._queue(self.name)

    @property
    def is_declared(self) -> bool:
        """Whether the queue exists on the broker (every other property raises if not)."""
        return self.name in self.broker.queue_names()

    @property
    def counts(self) -> dict[str, int]:
        """Number of messages per part: `ready`, `delayed`, `in_flight`, `dead`."""
        return self.broker.counts(self.name)

    @property
    def ready(self) -> list[QueuedMessage]:
        """Messages waiting to be consumed, in the order a consumer would get them."""
        q = self._queue()
        return [self._snapshot(e, MessageCategory.NORMAL) for d in q.ready for e in d]

    @property
    def delayed(self) -> list[QueuedMessage]:
        """Deferred, recurring and retried messages whose time has not come, soonest first."""
        q = self._queue()
        return [self._snapshot(e, MessageCategory.DELAYED) for _, _, e in sorted(q.delayed)]

    @property
    def in_flight(self) -> list[QueuedMessage]:
        """Messages handed out and not settled yet (e.g. an actor is running)."""
        q = self._queue()
        return [
            self._snapshot(lease.entry, MessageCategory.NORMAL) for lease in q.inflight.values()
        ]

    @property
    def dead(self) -> list[QueuedMessage]:
        """Dead letters, oldest first; `dead_letter` says why each one is there."""
        q = self._queue()
        return [self._snapshot(e, MessageCategory.DEAD) for e in q.dead.values()]

    @property
    def messages(self) -> list[QueuedMessage]:
        """Every message of the queue: ready, then in flight, delayed and dead."""
        return self.ready + self.in_flight + self.delayed + self.dead

    def __len__(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        state = self.counts if self.is_declared else "not declared"
        return f"InMemoryQueueView({self.name!r}, {state})"

    def _snapshot(self, entry: _Entry, category: MessageCategory) -> QueuedMessage:
        return QueuedMessage(
            entry.key, entry.payload, entry.parameters, category, self._args(entry)
        )

    def _args(self, entry: _Entry) -> dict[str, Any] | None:
        text: str | None = entry.payload
        if not text and entry.parameters.args_id is not None and self._args_loader is not None:
            text = self._args_loader(entry.parameters.args_id)
        if not text:
            return None
        try:
            args = json.loads(text)
        except ValueError:
            return None
        return args if isinstance(args, dict) else None
