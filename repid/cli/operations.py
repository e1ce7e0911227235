"""Operator commands as plain async functions: queue sizes, dead letters, enqueue.

The CLI calls them; they take a `Connection`, so they are usable (and tested) in-process too,
which is the only way they are meaningful with the in-memory broker.
"""

from __future__ import annotations

import difflib
import inspect
import sys
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from pydantic_core import from_json

from repid.brokers.base import SupportsInspection, inspection_of
from repid.connection import Connection
from repid.converter import ArgumentsError
from repid.data import MessageCategory, PrioritiesT
from repid.errors import QueueNotDeclaredError
from repid.failures import ErrorEntry
from repid.job import Job
from repid.message import Message
from repid.queue import Queue, validate_name
from repid.router import ActorData

__all__ = [
    "DeadFilter",
    "DeadLetter",
    "Progress",
    "QueueSizes",
    "did_you_mean",
    "enqueue",
    "list_dead",
    "purge_dead",
    "queue_sizes",
    "requeue_dead",
    "unknown_actor_message",
]


@dataclass(frozen=True)
class QueueSizes:
    """Messages per part of one queue; `declared` is False for a queue the broker lacks."""

    name: str
    declared: bool
    ready: int = 0
    delayed: int = 0
    in_flight: int = 0
    dead: int = 0


@dataclass(frozen=True)
class DeadLetter:
    """One dead message, as `repid dead list` shows it."""

    id_: str
    actor: str
    reason: str
    error: str
    attempts: int
    dead_at: float
    errors: tuple[ErrorEntry, ...] = ()
    """The error history the dead letter carries (`Worker(error_history=...)`)."""


class Progress:
    """A live `label: n/total` counter on a terminal; silent when `stream` is not a TTY."""

    __slots__ = ("_last", "count", "label", "stream", "total")

    def __init__(self, label: str, total: int | None, stream: TextIO | None = None) -> None:
        self.label = label
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.count = 0
        self._last = 0.0

    @property
    def live(self) -> bool:
        isatty = getattr(self.stream, "isatty", None)
        return bool(isatty is not None and isatty())

    def _line(self) -> str:
        return f"{self.label}: {self.count}" + (f"/{self.total}" if self.total is not None else "")

    def advance(self) -> None:
        self.count += 1
        now = time.monotonic()
        if self.live and now - self._last >= 0.05:  # a redraw per message would be the cost
            self._last = now
            self.stream.write("\r" + self._line())
            self.stream.flush()

    def close(self) -> None:
        if self.live:
            self.stream.write("\r" + self._line() + "\n")
            self.stream.flush()


async def _maybe_await(value: Any) -> Any:
    """Brokers answer `counts`/`queue_names` directly (in-memory) or as a coroutine (network)."""
    return await value if inspect.isawaitable(value) else value


async def _counts(inspection: SupportsInspection, queue: str) -> dict[str, int] | None:
    try:
        result: dict[str, int] = await _maybe_await(inspection.counts(queue))
    except QueueNotDeclaredError:
        return None
    return result


async def queue_sizes(connection: Connection, queues: Iterable[str] = ()) -> list[QueueSizes]:
    """Sizes of `queues` plus every queue the broker knows about, sorted by name.

    Raises:
        CLIError: the broker cannot report sizes (it does not declare `inspection`).
    """
    from repid.cli.target import CLIError

    broker = connection.raw_message_broker
    inspection = inspection_of(broker)
    if inspection is None:
        raise CLIError(f"{type(broker).__name__} cannot report queue sizes")
    names = set(queues)
    names.update(await _maybe_await(inspection.queue_names()))
    out = []
    for name in sorted(names):
        counts = await _counts(inspection, name)
        if counts is None:
            out.append(QueueSizes(name, declared=False))
        else:
            out.append(
                QueueSizes(
                    name,
                    declared=True,
                    ready=counts.get("ready", 0),
                    delayed=counts.get("delayed", 0),
                    in_flight=counts.get("in_flight", 0),
                    dead=counts.get("dead", 0),
                )
            )
    return out


def _queue(connection: Connection, name: str) -> Queue:
    return Queue(name, _connection=connection)


@dataclass(frozen=True)
class DeadFilter:
    """Which dead messages an operation acts on: all of them unless narrowed.

    `ids`: only these message ids; `reason`: only this reason (`exception`, `timeout`, ...);
    `actor`: only jobs of this actor; `limit`: at most this many (oldest first);
    `dead_before`: only messages dead before this time (a Unix timestamp).
    """

    ids: frozenset[str] | None = None
    reason: str | None = None
    actor: str | None = None
    limit: int | None = None
    dead_before: float | None = None

    @property
    def narrowed(self) -> bool:
        """True when not every dead message is selected."""
        return (
            self.ids is not None
            or self.reason is not None
            or self.actor is not None
            or self.dead_before is not None
        )

    def matches(self, message: Message) -> bool:
        """Whether `message` (a dead one) is selected."""
        if self.ids is not None and message.key.id_ not in self.ids:
            return False
        if self.actor is not None and message.key.topic != self.actor:
            return False
        if self.dead_before is not None:
            info = message.dead_letter
            if info is None or info.dead_at >= self.dead_before:
                return False
        if self.reason is not None:
            info = message.dead_letter
            if (info.reason if info is not None else "unknown") != self.reason:
                return False
        return True


_ALL = DeadFilter()


def _dead_messages(connection: Connection, queue: str, which: DeadFilter) -> AsyncIterator[Message]:
    topics = None if which.actor is None else [which.actor]
    return _queue(connection, queue).get_messages(
        topics, category=MessageCategory.DEAD, stop_when_empty=True
    )


async def list_dead(
    connection: Connection, queue: str, limit: int | None = None, which: DeadFilter = _ALL
) -> list[DeadLetter]:
    """The dead messages of `queue` (oldest first) that `which` selects, left in place."""
    limit = which.limit if limit is None else limit
    out: list[DeadLetter] = []
    async for message in _dead_messages(connection, queue, which):
        if not which.matches(message):
            continue
        info = message.dead_letter
        error = ""
        if info is not None and (info.error_type or info.error_message):
            error = ": ".join(p for p in (info.error_type, info.error_message) if p)
        out.append(
            DeadLetter(
                id_=message.key.id_,
                actor=message.key.topic,
                reason=info.reason if info is not None else "unknown",
                error=error,
                attempts=info.attempts if info is not None else message.parameters.attempt,
                dead_at=info.dead_at if info is not None else 0.0,
                errors=info.errors if info is not None else (),
            )
        )
        if limit is not None and len(out) >= limit:
            break
    return out


async def _settle_dead(
    connection: Connection,
    queue: str,
    how: str,
    label: str,
    stream: TextIO | None,
    which: DeadFilter,
) -> int:
    total: int | None = None
    if which.ids is not None:
        total = len(which.ids)
    elif not which.narrowed:
        inspection = inspection_of(connection.raw_message_broker)
        counts = None if inspection is None else await _counts(inspection, queue)
        total = None if counts is None else counts["dead"]
    if total is not None and which.limit is not None:
        total = min(total, which.limit)
    progress = Progress(label, total, stream)
    try:
        async for message in _dead_messages(connection, queue, which):
            if which.limit is not None and progress.count >= which.limit:
                break
            if not which.matches(message):
                continue
            await (message.retry(revive=True) if how == "retry" else message.ack())
            progress.advance()
    finally:
        progress.close()
    return progress.count


async def requeue_dead(
    connection: Connection, queue: str, stream: TextIO | None = None, which: DeadFilter = _ALL
) -> int:
    """Send the dead messages of `queue` that `which` selects (default: all) back to work with
    fresh retries; returns how many.

    Shows a live counter on `stream` (default stderr) when it is a terminal.
    """
    return await _settle_dead(connection, queue, "retry", f"requeued ({queue})", stream, which)


async def purge_dead(
    connection: Connection, queue: str, stream: TextIO | None = None, which: DeadFilter = _ALL
) -> int:
    """Delete the dead messages of `queue` that `which` selects (default: all); returns how
    many."""
    return await _settle_dead(connection, queue, "ack", f"purged ({queue})", stream, which)


def parse_args_json(text: str) -> dict[str, Any]:
    """`--args` text: a JSON object of keyword arguments."""
    from repid.cli.target import CLIError

    try:
        value = from_json(text)
    except ValueError as exc:
        raise CLIError(f"--args is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise CLIError("--args must be a JSON object of keyword arguments, e.g. '{\"x\": 1}'")
    return value


async def enqueue(
    connection: Connection,
    actor_name: str,
    args: dict[str, Any],
    *,
    queue: str | None = None,
    priority: PrioritiesT | None = None,
    delay: float | None = None,
    actors: dict[str, ActorData] | None = None,
) -> str:
    """Enqueue one job for `actor_name`; returns its message id.

    When the actor is among `actors`, its queue is the default and `args` are validated with
    its converter first, so a typo fails here rather than dead-letters later. A name that is
    not among non-empty `actors` is refused (naming the close match) unless `queue` is given:
    the job may then be for an actor of another program.
    """
    from repid.cli.target import CLIError

    validate_name(actor_name, "actor name")
    actor = (actors or {}).get(actor_name)
    if actor is None and actors and queue is None:
        raise CLIError(unknown_actor_message(actor_name, actors))
    if actor is not None:
        try:
            actor.converter.convert_inputs(Job(actor_name, args=args).payload)
        except ArgumentsError as exc:
            first = str(exc).splitlines()
            raise CLIError(
                f"arguments do not fit actor {actor_name!r}: " + " ".join(first[:3])
            ) from exc
    deferred_until = None
    if delay:
        deferred_until = datetime.now(UTC) + timedelta(seconds=delay)
    job = Job(
        actor_name,
        queue=_queue(connection, queue or (actor.queue if actor is not None else "default")),
        priority=priority,
        deferred_until=deferred_until,
        args=args or None,
        _connection=connection,
    )
    try:
        await job.enqueue()
    except QueueNotDeclaredError as exc:
        raise CLIError(
            f"queue {exc.queue_name!r} is not declared on the broker: start a worker for it, "
            "or run `repid declare TARGET` first"
        ) from exc
    assert job.last_id is not None
    return job.last_id


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)` for the closest of `choices` to `name`, or `""`."""
    close = difflib.get_close_matches(name, sorted(set(choices)), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_actor_message(actor_name: str, actors: dict[str, ActorData]) -> str:
    """The one-line error for an actor name the app does not define, with the close match."""
    known = ", ".join(sorted(actors)[:10]) + (", ..." if len(actors) > 10 else "")
    return (
        f"unknown actor {actor_name!r}{did_you_mean(actor_name, actors)}; the app's actors: "
        f"{known} (give --queue to enqueue for an actor the app does not define)"
    )
