"""What the dashboard pages show, read through the broker APIs that exist (no second store).

Counts and dead-letter actions are `repid.cli.operations`' functions, shared with the CLI;
listings browse a part with `Queue.get_messages(..., stop_when_empty=True)` and stop early.
"""

from __future__ import annotations

from dataclasses import dataclass

from repid.cli.operations import QueueSizes, queue_sizes
from repid.connection import Connection
from repid.data import MessageCategory, ResultBucket
from repid.errors import BrokerError
from repid.lifecycle import WorkerInfo
from repid.message import Message
from repid.queue import Queue

__all__ = [
    "PARTS",
    "MessagePage",
    "MessageRow",
    "Overview",
    "find_message",
    "job_result",
    "load_overview",
    "message_page",
    "truncate",
]

PARTS: dict[str, MessageCategory] = {
    "delayed": MessageCategory.DELAYED,
    "dead": MessageCategory.DEAD,
}
"""The parts a queue page lists. READY messages are only counted: listing them would lease
them away from the workers for the time of the request."""

PAYLOAD_LIMIT = 200
"""Characters of a payload shown in a list; the message page shows all of it."""


def truncate(text: str, limit: int = PAYLOAD_LIMIT) -> str:
    """`text` cut to `limit` characters, with the number of characters left out."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text) - limit} more characters)"


@dataclass(frozen=True)
class MessageRow:
    """One message of a part, as the queue and message pages show it."""

    id_: str
    actor: str
    payload: str
    attempts: int
    result_id: str | None
    reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    dead_at: float | None = None

    @classmethod
    def of(cls, message: Message) -> MessageRow:
        """The row of a browsed message (its dead-letter record, when it has one)."""
        info = message.dead_letter
        result = message.parameters.result
        return cls(
            id_=message.key.id_,
            actor=message.key.topic,
            payload=message.raw_payload,
            attempts=info.attempts if info is not None else message.parameters.attempt,
            result_id=None if result is None else result.id_,
            reason=None if info is None else info.reason,
            error_type=None if info is None else info.error_type,
            error_message=None if info is None else info.error_message,
            traceback=None if info is None else info.traceback,
            dead_at=None if info is None else info.dead_at,
        )


@dataclass(frozen=True)
class Overview:
    """Every queue's sizes, and the live workers (None: the broker keeps no registry)."""

    queues: list[QueueSizes]
    workers: list[WorkerInfo] | None


async def load_overview(connection: Connection, queues: list[str] | None = None) -> Overview:
    """The overview page's data: `queue_sizes` (as `repid queues`) and live workers."""
    sizes = await queue_sizes(connection, queues or [])
    try:
        workers: list[WorkerInfo] | None = await connection.live_workers()
    except BrokerError:
        workers = None
    return Overview(sizes, workers)


@dataclass(frozen=True)
class MessagePage:
    """One page of a part: `rows`, whether more follow, and how many messages were fetched."""

    rows: list[MessageRow]
    has_more: bool
    fetched: int


async def message_page(
    connection: Connection,
    queue: str,
    part: str,
    *,
    offset: int = 0,
    limit: int = 50,
    search: str | None = None,
) -> MessagePage:
    """Messages `offset..offset+limit` of one part (or those whose id contains `search`).

    The broker browses oldest first and cannot seek, so the iteration stops as soon as the
    page (plus one message, to know there is a next page) has been read: page 1 fetches at most
    `limit + 1` messages, page n `n * limit + 1`.
    """
    rows: list[MessageRow] = []
    fetched = 0
    seen = 0
    has_more = False
    messages = Queue(queue, _connection=connection).get_messages(
        category=PARTS[part], stop_when_empty=True
    )
    try:
        async for message in messages:
            fetched += 1
            if search and search not in message.key.id_:
                continue
            if seen < offset:
                seen += 1
                continue
            if len(rows) >= limit:
                has_more = True
                break
            rows.append(MessageRow.of(message))
            seen += 1
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
    return MessagePage(rows, has_more, fetched)


async def find_message(
    connection: Connection, queue: str, part: str, id_: str
) -> MessageRow | None:
    """The message `id_` of one part, or None."""
    messages = Queue(queue, _connection=connection).get_messages(
        category=PARTS[part], stop_when_empty=True
    )
    try:
        async for message in messages:
            if message.key.id_ == id_:
                return MessageRow.of(message)
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
    return None


async def job_result(connection: Connection, result_id: str) -> ResultBucket | None:
    """The stored result `result_id` from the results bucket (None: not stored, or no bucket)."""
    broker = connection.results_bucket_broker
    if broker is None:
        return None
    bucket = await broker.get_bucket(result_id)
    return bucket if isinstance(bucket, ResultBucket) else None
