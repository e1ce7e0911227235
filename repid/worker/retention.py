"""Dead-letter retention (`Worker(dead_letter_ttl=...)`): dead letters older than the TTL are
deleted by a sweep that runs as a recurring job, one per queue, in the `repid_retention` queue.

The job's fixed id (`retention-<queue>`) keeps one sweep of a queue pending at a time: every
worker with a TTL enqueues it at start-up (a duplicate of a pending id is dropped), and whichever
worker takes it sweeps, then the job waits `retention_interval` for its next run. A worker that
dies mid-sweep leaves the job to the broker's redelivery, like any other job.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable, Iterable
from datetime import timedelta
from typing import TYPE_CHECKING

from repid.brokers.base import inspection_of
from repid.data import MessageCategory
from repid.errors import ConfigurationError, QueueNotDeclaredError
from repid.message import MessageDependency

if TYPE_CHECKING:
    from repid.connection import Connection
    from repid.router import Router

__all__ = [
    "RETENTION_ACTOR",
    "RETENTION_QUEUE",
    "expire_dead_letters",
    "install_sweeper",
    "schedule_sweeps",
    "seconds",
]

logger = logging.getLogger("repid.worker")

RETENTION_QUEUE = "repid_retention"
"""The queue of the sweep jobs (declared by the workers that sweep)."""
RETENTION_ACTOR = "repid_retention"
"""The actor that sweeps one queue's dead letters."""


def seconds(value: timedelta | float, what: str) -> float:
    """`value` in seconds, > 0 (a clear error otherwise)."""
    out = value.total_seconds() if isinstance(value, timedelta) else float(value)
    if not out > 0:
        raise ConfigurationError(f"{what} must be > 0 (got {value!r})")
    return out


async def expire_dead_letters(
    connection: Connection, queue: str, older_than: float, *, now: float | None = None
) -> int:
    """Delete the dead letters of `queue` that died more than `older_than` seconds before `now`
    (default: the current time); returns how many were deleted.

    Dead letters are kept in the order they died on every broker, so the sweep stops at the
    first one that is young enough to stay. A dead letter without a death time (a raw message
    dead-lettered by the server itself) is kept.
    """
    from repid.queue import Queue

    cutoff = (time.time() if now is None else now) - older_than
    inspection = inspection_of(connection.raw_message_broker)
    if inspection is not None:  # a queue that is gone raises QueueNotDeclaredError here
        # (not a shortcut when the count says 0: a RabbitMQ cluster node can report a quorum
        # queue's count late, so the dead part is read all the same)
        counts = inspection.counts(queue)
        if inspect.isawaitable(counts):
            await counts
    removed = 0
    messages = Queue(queue, _connection=connection).get_messages(
        category=MessageCategory.DEAD, stop_when_empty=True
    )
    try:
        async for message in messages:
            info = message.dead_letter
            if info is None:
                continue
            if info.dead_at >= cutoff:
                break
            await message.ack()
            removed += 1
    finally:
        await messages.aclose()  # type: ignore[attr-defined]
    return removed


def install_sweeper(router: Router, connection: Callable[[], Connection], ttl: float) -> None:
    """Register the sweeping actor on `router` (a worker); it deletes what is older than `ttl`."""

    async def repid_retention(queue: str, message: MessageDependency) -> int:
        started = time.monotonic()
        try:
            removed = await expire_dead_letters(connection(), queue, ttl)
        except QueueNotDeclaredError:
            logger.info("retention: queue %r no longer exists; its sweeps end", queue)
            await message.ack()  # not rescheduled
            return 0
        logger.log(
            logging.INFO if removed else logging.DEBUG,
            "retention: deleted %d dead letter(s) of %r older than %.0fs in %.3fs",
            removed,
            queue,
            ttl,
            time.monotonic() - started,
        )
        return removed

    router.actor(name=RETENTION_ACTOR, queue=RETENTION_QUEUE, retries=0)(repid_retention)


async def schedule_sweeps(connection: Connection, queues: Iterable[str], interval: float) -> None:
    """Make sure the sweep job of each queue is pending (a duplicate id is dropped)."""
    from repid.job import Job

    await connection.message_broker.queue_declare(RETENTION_QUEUE)
    for queue in queues:
        if queue == RETENTION_QUEUE:
            continue
        await Job(
            RETENTION_ACTOR,
            queue=RETENTION_QUEUE,
            id_=f"retention-{queue}",
            deferred_by=timedelta(seconds=interval),
            args={"queue": queue},
            retries=0,
            store_result=False,
            _connection=connection,
        ).enqueue()
