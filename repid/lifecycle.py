"""Job lifecycle beyond running an actor: events, snoozing, cancellation and per-actor limits.

Events are delivered to handlers registered on the `Connection` (or `Repid(event_handlers=...)`)
by producers (enqueued) and workers (started, succeeded, failed, retried, dead_lettered,
cancelled, snoozed). A handler that raises is logged and ignored.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from repid.errors import ConfigurationError, RepidError

__all__ = [
    "ActorLimiter",
    "CancelOutcome",
    "EventDispatcher",
    "EventKind",
    "JobCancelledError",
    "JobEvent",
    "JobFailedError",
    "JobNotFoundError",
    "RateLimit",
    "Snooze",
    "WorkerInfo",
]

logger = logging.getLogger("repid.lifecycle")


class Snooze(Exception):  # noqa: N818 - named for what the actor says, like asyncio.CancelledError
    """Raise from an actor to run the job again after `delay`, without counting an attempt."""

    def __init__(self, delay: timedelta | float) -> None:
        seconds = delay.total_seconds() if isinstance(delay, timedelta) else float(delay)
        if seconds < 0:
            raise ConfigurationError("Snooze delay must be >= 0")
        super().__init__(f"snoozed for {seconds:g}s")
        self.delay = timedelta(seconds=seconds)


class JobFailedError(RepidError):
    """The job's actor failed for good (`job.wait()` raises it with the actor's error).

    Attributes:
        exception_type: the name of the actor's exception class.
        details: the actor's traceback, as text.
    """

    def __init__(self, message: str, exception_type: str | None, details: str | None) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.details = details


class JobCancelledError(JobFailedError):
    """The job was cancelled while it ran."""


class JobNotFoundError(RepidError, LookupError):
    """No pending or running job has that id in that queue."""


class CancelOutcome(enum.StrEnum):
    """What `cancel` did."""

    DEQUEUED = "dequeued"
    """The job was waiting; it is removed and will never run."""
    REQUESTED = "requested"
    """The job is running; its worker cancels it promptly and records it as cancelled."""


class EventKind(enum.StrEnum):
    ENQUEUED = "enqueued"
    STARTED = "started"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    CANCELLED = "cancelled"
    SNOOZED = "snoozed"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """Something that happened to a job.

    Attributes:
        kind: what happened.
        job_id: the message id.
        actor: the actor (job) name.
        queue: the queue name.
        attempt: 1-based attempt number.
        at: when, in epoch seconds.
        duration: seconds the actor ran (finished-kind events), else None.
        error_type: the exception class name (failed, dead_lettered, retried).
        error: the exception message.
        worker: the id of the worker that emitted it (None for `enqueued`).
        traceback: the exception's formatted traceback (failed, dead_lettered).
        due: epoch seconds when the job is next ready, if later than `at` (enqueued with a
            delay, retried after a delay, snoozed).
    """

    kind: EventKind
    job_id: str
    actor: str
    queue: str
    attempt: int
    at: float
    duration: float | None = None
    error_type: str | None = None
    error: str | None = None
    worker: str | None = None
    traceback: str | None = None
    due: float | None = None


EventHandler = Callable[[JobEvent], Awaitable[None] | None]


class EventDispatcher:
    """Calls registered handlers with each `JobEvent` (in registration order)."""

    def __init__(self) -> None:
        self._handlers: list[tuple[EventHandler, frozenset[EventKind] | None, bool]] = []
        self.active = False
        """Whether any handler is registered (read on the hot path: an attribute, not a call)."""

    def __bool__(self) -> bool:
        return self.active

    def add(self, handler: EventHandler, kinds: Iterable[EventKind | str] | None = None) -> None:
        """Register `handler` (sync or async) for `kinds` (default: every kind)."""
        event_handler_signature(handler)
        wanted = None if kinds is None else frozenset(EventKind(k) for k in kinds)
        self._handlers.append((handler, wanted, inspect.iscoroutinefunction(handler)))
        self.active = True

    def remove(self, handler: EventHandler) -> bool:
        """Unregister `handler` (every registration of it); False if it was not registered."""
        before = len(self._handlers)
        self._handlers = [entry for entry in self._handlers if entry[0] != handler]
        self.active = bool(self._handlers)
        return len(self._handlers) != before

    async def emit(self, event: JobEvent) -> None:
        for handler, kinds, is_async in self._handlers:
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                result = handler(event)
                if is_async or inspect.isawaitable(result):
                    await result  # type: ignore[misc]
            except Exception:
                logger.exception("event handler %r raised on %s; ignored", handler, event.kind)


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most `limit` runs started per `per` (a sliding window)."""

    limit: int
    per: timedelta = timedelta(seconds=1)

    def __post_init__(self) -> None:
        if self.limit < 1 or self.per <= timedelta(0):
            raise ConfigurationError("RateLimit needs limit >= 1 and a positive period")


class ActorLimiter:
    """Per-actor `max_concurrency` and `rate_limit` (shared by workers where the broker can).

    A limited job waits for its turn (its lease keeps being renewed); it is never dropped and
    never counted as failed.
    """

    def __init__(self, max_concurrency: int | None, rate_limit: RateLimit | None) -> None:
        if max_concurrency is not None and max_concurrency < 1:
            raise ConfigurationError("max_concurrency must be >= 1")
        self.max_concurrency = max_concurrency
        self.rate_limit = rate_limit
        self._semaphore = asyncio.Semaphore(max_concurrency) if max_concurrency else None
        self._starts: deque[float] = deque()
        self._rate_lock = asyncio.Lock()

    async def acquire(self) -> None:
        if self._semaphore is not None:
            await self._semaphore.acquire()
        if self.rate_limit is not None:
            try:
                await self._wait_for_rate()
            except BaseException:
                self.release()
                raise

    async def _wait_for_rate(self) -> None:
        assert self.rate_limit is not None
        window = self.rate_limit.per.total_seconds()
        async with self._rate_lock:
            while True:
                now = time.monotonic()
                starts = self._starts
                while starts and starts[0] <= now - window:
                    starts.popleft()
                if len(starts) < self.rate_limit.limit:
                    starts.append(now)
                    return
                await asyncio.sleep(starts[0] + window - now)

    def release(self) -> None:
        if self._semaphore is not None:
            self._semaphore.release()


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A live worker, as it last reported itself.

    Attributes:
        id: unique per worker run (`host:pid:random`).
        host: the machine's name.
        pid: the worker's process id.
        queues: the queues it consumes.
        concurrency: its `tasks_limit`.
        in_flight: actors running at its last heartbeat.
        started_at: epoch seconds when it started.
        last_seen: epoch seconds of its last heartbeat.
    """

    id: str
    host: str
    pid: int
    queues: tuple[str, ...]
    concurrency: int
    in_flight: int
    started_at: float
    last_seen: float


HEARTBEAT_INTERVAL = 5.0
"""Seconds between a worker's heartbeats."""
STALE_AFTER = 3 * HEARTBEAT_INTERVAL
"""A worker not heard from for this long is no longer listed as live."""


def event_handler_signature(handler: Callable[..., Any]) -> None:
    """Reject handlers that cannot take one positional argument (a clear error at registration)."""
    try:
        inspect.signature(handler).bind(None)
    except TypeError as exc:
        raise ConfigurationError(f"event handler {handler!r} must accept one JobEvent") from exc
