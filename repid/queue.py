"""`Queue`: declare, flush, delete a queue and browse its messages."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import re
from collections.abc import AsyncIterator, Sequence

from repid.connection import Connection
from repid.data import MessageCategory
from repid.errors import ConfigurationError
from repid.main import Repid
from repid.message import Message

__all__ = ["Queue", "validate_name"]

_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_\-]*")


_VALID_NAMES: set[str] = set()

SETTLE_GRACE = 5.0
"""Seconds a closed `get_messages()` iterator waits for the messages it handed out to be
settled before it returns the rest to the queue."""


def validate_name(value: str, what: str) -> str:
    """Names of actors and queues: `[a-zA-Z_][a-zA-Z0-9_-]*`.

    The error starts with repid 1.6's sentence (e.g. "Job name must start with ...").
    """
    if value in _VALID_NAMES:
        return value
    if not isinstance(value, str) or _NAME.fullmatch(value) is None:
        raise ConfigurationError(
            f"{what[:1].upper()}{what[1:]} must start with a letter or an underscore followed by "
            f"letters, digits, dashes or underscores. The {what} {value!r} is invalid."
        )
    if len(_VALID_NAMES) < 10_000:
        _VALID_NAMES.add(value)
    return value


class Queue:
    """A named queue on the connection's message broker.

    Args:
        name: the queue's name (`[a-zA-Z_][a-zA-Z0-9_-]*`).
    """

    __slots__ = ("_connection", "name")

    def __init__(self, name: str = "default", _connection: Connection | None = None) -> None:
        self.name = validate_name(name, "queue name")
        self._connection = _connection

    @property
    def connection(self) -> Connection:
        if self._connection is not None:
            return self._connection
        return Repid.get_magic_connection()

    async def declare(self) -> None:
        """Create the queue on the broker (no effect if it exists)."""
        await self.connection.message_broker.queue_declare(self.name)

    async def flush(self) -> None:
        """Remove every message of the queue (ready, delayed and dead)."""
        await self.connection.message_broker.queue_flush(self.name)

    async def delete(self) -> None:
        """Delete the queue and its messages."""
        await self.connection.message_broker.queue_delete(self.name)

    def get_messages(
        self,
        topics: Sequence[str] | None = None,
        max_unacked_messages: int | None = None,
        category: MessageCategory = MessageCategory.NORMAL,
        *,
        stop_when_empty: bool = False,
    ) -> AsyncIterator[Message]:
        """Yield the messages of one part of the queue (NORMAL, DELAYED or DEAD).

        As in repid 1.6, the iterator waits for the next message when the part is empty; it
        never ends by itself. NORMAL messages are consumed (leased): settle each one (`ack`,
        `reject`, ...). DELAYED and DEAD messages are browsed: `ack()` deletes one.

        Args:
            topics: only messages of these actors.
            max_unacked_messages: at most this many NORMAL messages unsettled at once.
            category: the part of the queue.
            stop_when_empty: end the iteration once the messages now in that part have been
                yielded, instead of waiting for more. NORMAL messages left unsettled then go
                back to the queue when the iteration ends.
        """
        if stop_when_empty:
            return self._until_empty(topics, max_unacked_messages, category)
        if category is MessageCategory.NORMAL:
            return self._wait_normal(topics, max_unacked_messages)
        return self._wait_browsed(topics, category)

    async def _wait_normal(
        self, topics: Sequence[str] | None, max_unacked_messages: int | None
    ) -> AsyncIterator[Message]:
        broker = self.connection.message_broker
        consumer = broker.get_consumer(self.name, topics, max_unacked_messages)
        await consumer.start()
        unsettled: set[Message] = set()
        all_settled = asyncio.Event()
        all_settled.set()

        def settled(message: Message) -> None:
            unsettled.discard(message)
            if not unsettled:
                all_settled.set()

        try:
            while True:
                _raise_if_cancelled()
                # The broker blocks in `fetch` until a message arrives (or the second passes).
                for delivery in await consumer.fetch(100, 1.0):
                    message = Message(delivery, broker)
                    message._on_settled = functools.partial(settled, message)
                    unsettled.add(message)
                    all_settled.clear()
                    yield message
        finally:
            # 1.6 code drops the iterator and then settles what it got (`m = await
            # q.get_messages().__anext__(); await m.ack()`): give the holder time to settle
            # before the consumer ends; what is still unsettled then goes back to the queue.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(all_settled.wait(), SETTLE_GRACE)
            for message in list(unsettled):
                if not message.read_only:
                    await message.reject()
            await consumer.finish()

    async def _wait_browsed(
        self, topics: Sequence[str] | None, category: MessageCategory
    ) -> AsyncIterator[Message]:
        broker = self.connection.message_broker
        seen: set[tuple[str, float]] = set()
        pause = 0.02
        while True:
            _raise_if_cancelled()
            # A browsing consumer lists what the part holds now; brokers have no event for
            # "a message became delayed or dead", so look again after a growing pause.
            consumer = broker.get_consumer(self.name, topics, None, category)
            await consumer.start()
            found = False
            try:
                while batch := await consumer.fetch(100, 0.0):
                    for delivery in batch:
                        identity = (
                            delivery.key.id_,
                            delivery.parameters.timer.timestamp.timestamp(),
                        )
                        if identity in seen:
                            continue
                        seen.add(identity)
                        found = True
                        yield Message(delivery, broker)
            finally:
                await consumer.finish()
            pause = 0.02 if found else min(pause * 2, 0.5)
            await asyncio.sleep(pause)

    async def _until_empty(
        self,
        topics: Sequence[str] | None,
        max_unacked_messages: int | None,
        category: MessageCategory,
    ) -> AsyncIterator[Message]:
        broker = self.connection.message_broker
        consumer = broker.get_consumer(self.name, topics, max_unacked_messages, category)
        await consumer.start()
        handed_out: list[Message] = []
        seen: set[tuple[str, float]] = set()
        try:
            while True:
                batch = await consumer.fetch(100, 0.0)
                if not batch:
                    return
                for index, delivery in enumerate(batch):
                    if category is MessageCategory.NORMAL:
                        # A message's identity across a give-back or a retry: its id and
                        # creation time (two jobs may share an id, not both).
                        identity = (
                            delivery.key.id_,
                            delivery.parameters.timer.timestamp.timestamp(),
                        )
                        if identity in seen:
                            # Wrapped around: the caller gave this one back. Return what is
                            # left of the batch and stop, or the loop would never end.
                            for rest in reversed(batch[index:]):
                                await broker.reject(rest)
                            return
                        seen.add(identity)
                    message = Message(delivery, broker)
                    if category is MessageCategory.NORMAL:
                        handed_out.append(message)
                    yield message
        finally:
            # Messages the caller did not settle go back to the queue at once, in their order.
            for message in reversed(handed_out):
                if not message.read_only:
                    await message.reject()
            await consumer.finish()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Queue) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"Queue(name={self.name!r})"

    def __str__(self) -> str:
        return f"Queue({self.name})"  # repid 1.6's text


def _raise_if_cancelled() -> None:
    """Stop a waiting iterator whose task was cancelled even if a client library swallowed
    the `CancelledError` (seen with aiormq while a browsing channel opened or closed): the
    iterator would otherwise poll for ever under a `wait_for` that already gave up."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
