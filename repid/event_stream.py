"""Job lifecycle events on the message broker: published by `Connection(publish_events=True)`,
read from any process with `async for event in connection.events(...)`.

Delivery is at-most-once pub/sub: a subscriber sees the events published while it is
subscribed; events of one publishing process arrive in the order it emitted them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import fields
from typing import Any

from repid.brokers.base import SupportsEventBus
from repid.lifecycle import EventDispatcher, EventKind, JobEvent

__all__ = ["BrokerEvents", "EventPublisher", "EventStream", "decode_event", "encode_event"]

logger = logging.getLogger("repid.events")

_FIELDS = tuple(f.name for f in fields(JobEvent))
_CUT = "...\n"


def _dumps(body: dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


def encode_event(event: JobEvent, max_bytes: int | None = None) -> bytes:
    """`event` as compact JSON (fields that are None left out).

    With `max_bytes`, the traceback and then the error message are cut (their start dropped,
    the end kept: the innermost frames and the message's end) until the encoding fits.
    """
    body = {name: getattr(event, name) for name in _FIELDS if getattr(event, name) is not None}
    data = _dumps(body)
    if max_bytes is None or len(data) <= max_bytes:
        return data
    for name in ("traceback", "error"):
        text = body.get(name)
        if text is None:
            continue
        # The longest kept end that fits (JSON escapes make bytes and characters differ).
        low, high, fitting = 0, len(text), None
        while low <= high:
            keep = (low + high) // 2
            body[name] = _CUT + text[len(text) - keep :] if keep else _CUT
            candidate = _dumps(body)
            if len(candidate) <= max_bytes:
                fitting, low = candidate, keep + 1
            else:
                high = keep - 1
        if fitting is not None:
            return fitting
        body[name] = _CUT
    return _dumps(body)  # still too long: the broker refuses it and the publisher logs it


def decode_event(data: bytes) -> JobEvent | None:
    """The event in `data`, or None (logged) when it is not one of ours."""
    try:
        body = json.loads(data)
        values: dict[str, Any] = {name: body[name] for name in _FIELDS if name in body}
        values["kind"] = EventKind(values["kind"])
        return JobEvent(**values)
    except (ValueError, TypeError, KeyError):
        logger.debug("ignored a message on the event channel that is not a job event: %r", data)
        return None


class EventPublisher:
    """The event handler of `Connection(publish_events=True)`: it never waits for the broker.

    Each event goes into a bounded buffer that one background task (started on demand, ended
    when the buffer is empty, awaited by `close`) publishes in order. A publish that fails is
    dropped and counted; failures are logged at most once per `log_interval` seconds. When the
    buffer is full the oldest event is dropped.
    """

    def __init__(
        self, bus: SupportsEventBus, *, buffer: int = 1000, log_interval: float = 30.0
    ) -> None:
        self.bus = bus
        self.buffer = buffer
        self.dropped = 0
        """Events not published (a broker error or a full buffer), since the start."""
        self._pending: deque[JobEvent] = deque()
        self._task: asyncio.Task[None] | None = None
        self._log_interval = log_interval
        self._logged_at = -log_interval
        self._unlogged = 0
        self._max_bytes = bus.max_event_size

    def __call__(self, event: JobEvent) -> None:
        if len(self._pending) >= self.buffer:
            self._pending.popleft()
            self._drop("the buffer of unpublished events is full")
        self._pending.append(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._flush(), name="repid-event-publisher"
            )

    async def _flush(self) -> None:
        pending = self._pending
        while pending:
            event = pending.popleft()
            try:
                await self.bus.publish_event(encode_event(event, self._max_bytes))
            except Exception as exc:  # a broker error must never reach the job
                self._drop(f"{type(exc).__name__}: {exc}")
            except asyncio.CancelledError:
                self._drop("the connection closed before it was published")
                raise

    def _drop(self, reason: str) -> None:
        self.dropped += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= self._log_interval:
            logger.warning(
                "%d job event(s) not published on the broker and dropped (last: %s)",
                self._unlogged,
                reason,
            )
            self._logged_at = now
            self._unlogged = 0

    async def close(self, timeout: float = 5.0) -> None:
        """Publish what is buffered (for at most `timeout` seconds), then stop."""
        task = self._task
        if task is None or task.done():
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            left = len(self._pending)
            self._pending.clear()
            for _ in range(left):
                self._drop("the connection closed before they were published")


async def _read(
    bus: SupportsEventBus,
    kinds: frozenset[EventKind] | None,
    queue: str | None,
    job_id: str | None,
) -> AsyncGenerator[JobEvent | None]:
    async with bus.subscribe_events() as feed:
        yield None  # subscribed
        async for data in feed:
            event = decode_event(data)
            if (
                event is None
                or (kinds is not None and event.kind not in kinds)
                or (queue is not None and event.queue != queue)
                or (job_id is not None and event.job_id != job_id)
            ):
                continue
            yield event


class EventStream:
    """The job events published on the broker from now on, filtered (`connection.events()`).

    `async for event in stream` subscribes on its first step; `async with stream:` subscribes on
    entering, so that nothing published after that point is missed. Leaving the `async with`,
    `await stream.aclose()`, or breaking out of the loop (once the stream is garbage) unsubscribes.
    """

    def __init__(
        self,
        bus: SupportsEventBus,
        kinds: Iterable[EventKind | str] | None = None,
        queue: str | None = None,
        job_id: str | None = None,
    ) -> None:
        self.kinds = None if kinds is None else frozenset(EventKind(k) for k in kinds)
        self.queue = queue
        self.job_id = job_id
        # The generator must not hold the stream: a stream dropped after `break` is then freed
        # at once, and the loop's finalizer closes the generator (unsubscribing) right away.
        self._events = _read(bus, self.kinds, queue, job_id)
        self._subscribed = False

    async def subscribe(self) -> None:
        """Subscribe now (idempotent); `async with` and the first `async for` step call it."""
        if not self._subscribed:
            self._subscribed = True
            await anext(self._events)

    async def aclose(self) -> None:
        """Unsubscribe; the iteration ends."""
        await self._events.aclose()

    async def __aenter__(self) -> EventStream:
        await self.subscribe()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> JobEvent:
        await self.subscribe()
        event = await anext(self._events)
        assert event is not None
        return event


class BrokerEvents(EventDispatcher):
    """`connection.events`: the connection's in-process event handlers (`add`, `remove`,
    `emit`, `active`, as on any `EventDispatcher`) and, called, a subscription to the events
    published on the broker."""

    def __init__(self, bus: Callable[[], SupportsEventBus]) -> None:
        super().__init__()
        self._bus = bus

    def __call__(
        self,
        kinds: Iterable[EventKind | str] | None = None,
        queue: str | None = None,
        job_id: str | None = None,
    ) -> EventStream:
        """The job events published on the broker by `Connection(publish_events=True)` in
        any process, from now on: `async for event in connection.events(kinds=["succeeded"])`.

        At-most-once: only events published while subscribed arrive (`async with
        connection.events(...) as events:` subscribes on entering). Breaking out of the loop or
        leaving the `async with` unsubscribes.

        Args:
            kinds: only these kinds (default: every kind).
            queue: only events of this queue.
            job_id: only events of this job.

        Raises:
            BrokerError: the message broker has no event bus (`capabilities.event_bus`).
        """
        return EventStream(self._bus(), kinds, queue, job_id)
