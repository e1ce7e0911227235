"""What one run of a worker holds: its lanes (concurrent slots), counters and broker features.

Every part of the runner (`lanes`, `processing`, `settlement`, `supervisors`, `health`) builds on
`RunnerState`; `repid.worker.runner.Runner` puts them together.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any, Protocol

from repid.brokers.base import (
    Delivery,
    SupportsCancellation,
    SupportsWorkerRegistry,
    actor_limits_of,
    cancellation_of,
    worker_registry_of,
)
from repid.failures import DEFAULT_ERROR_BYTES, DEFAULT_ERROR_HISTORY
from repid.ids import new_id
from repid.lifecycle import ActorLimiter, EventKind, JobCancelledError, JobEvent
from repid.router import ActorData
from repid.worker.outcome import ErrorHistory

if TYPE_CHECKING:
    import signal

    from repid._executor import DaemonThreadPool
    from repid.connection import Connection
    from repid.health_check_server import HealthCheckServer, HealthCheckServerSettings

logger = logging.getLogger("repid.worker")
"""Every part of the worker logs as `repid.worker`."""


class WorkerSettings(Protocol):
    """What a run reads from its `Worker` (kept as a protocol: the runner never imports it)."""

    @property
    def actors(self) -> dict[str, ActorData]: ...

    @property
    def graceful_shutdown_time(self) -> float: ...

    @property
    def messages_limit(self) -> int | float: ...

    @property
    def tasks_limit(self) -> int: ...

    @property
    def handle_signals(self) -> Sequence[signal.Signals]: ...

    @property
    def run_health_check_server(self) -> bool: ...

    @property
    def health_check_server_settings(self) -> HealthCheckServerSettings | None: ...

    @property
    def heartbeat_interval(self) -> float: ...

    @property
    def prefetch(self) -> int: ...

    @property
    def startup_timeout(self) -> float: ...

    @property
    def settle_ends_actor(self) -> bool: ...

    @property
    def state(self) -> Any: ...


class DrainedError(Exception):
    """Drain mode: no ready message is left."""


class Lane:
    """One of the worker's `tasks_limit` concurrent slots: a task that runs actors in turn."""

    __slots__ = ("cancel_requested", "current", "deadline", "idle", "in_actor", "task", "timed_out")

    def __init__(self) -> None:
        self.idle = False
        self.in_actor = False
        self.cancel_requested = False
        self.task: asyncio.Task[None] = None  # type: ignore[assignment]  # set right after
        self.current: Delivery | None = None
        self.deadline = math.inf
        self.timed_out = False

    def interruption(self) -> BaseException:
        """What the worker interrupted the actor for (timeout or cancellation)."""
        if self.timed_out:
            return TimeoutError("the actor exceeded its timeout")
        return JobCancelledError("the job was cancelled while it ran", "JobCancelledError", None)

    def end_actor(self) -> None:
        """The actor returned or raised: no more timeouts or cancellations for it."""
        self.in_actor = False
        self.deadline = math.inf
        self.current = None


class RunnerState:
    """The state of one run, shared by the parts of the runner.

    Counters: `processed` (every message taken and settled), `succeeded`, `failed` (attempts
    that raised or timed out), `retried`, `dead_lettered`, `rejected` (returned on shutdown),
    `snoozed`, `cancelled`.
    """

    def __init__(
        self, worker: WorkerSettings, connection: Connection, *, drain: bool = False
    ) -> None:
        self.worker = worker
        self.log_jobs = bool(getattr(worker, "log_jobs", False))
        self.drain = drain
        self.connection = connection
        self.broker: Any = connection.message_broker
        raw = connection.raw_message_broker
        self.cancellation: SupportsCancellation | None = cancellation_of(raw)
        self.registry: SupportsWorkerRegistry | None = worker_registry_of(raw)
        self.actors: dict[str, ActorData] = dict(worker.actors)
        self.processed = 0
        self.succeeded = 0
        self.failed = 0
        self.retried = 0
        self.dead_lettered = 0
        self.rejected = 0
        self.snoozed = 0
        self.cancelled = 0
        self.crashed: BaseException | None = None
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        """This run's id, as in the worker registry and job records (`host:pid:random`)."""
        self.history = ErrorHistory(
            getattr(worker, "error_history", DEFAULT_ERROR_HISTORY),
            getattr(worker, "error_bytes", DEFAULT_ERROR_BYTES),
            self.worker_id,
        )
        """How much of its failures each message keeps (`Worker(error_history=...)`)."""
        limit = worker.messages_limit
        self._tickets: int | None = None if math.isinf(limit) else math.ceil(limit)
        self._limit = self._tickets
        self._stop = asyncio.Event()
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        self._lane_states: list[Lane] = []
        self._lanes_alive = 0
        self._loop_time: Callable[[], float] = time.monotonic
        self._thread_pool: DaemonThreadPool | None = None
        self._process_pool: Executor | None = None
        self._consumers: list[Any] = []
        self._inbox: asyncio.Queue[Delivery] | None = None
        self._stop_taking: Callable[[], Awaitable[None]] | None = None
        self._health: HealthCheckServer | None = None
        self._events = connection.events
        self.healthy = True
        """False from the first failure to consume until the broker answers again."""
        self._outages: dict[object, asyncio.Event] = {}
        """Sources whose outage a lane leads: set when its probe reached the broker."""
        self._probes: dict[object, Callable[[], Awaitable[list[Delivery]]]] = {}
        """How to probe each source (a short `fetch`) while its broker is unreachable."""
        self._settled: set[int] = set()
        """`id()` of the deliveries being processed that the broker was already told about."""
        # Limits are shared by every worker of the broker where the broker can share them
        # (the in-memory broker within its process, brokers with shared state), else per worker.
        shared = actor_limits_of(raw)
        self._limiters: dict[str, ActorLimiter] = {
            actor.name: (
                shared.actor_limiter(actor.name, actor.max_concurrency, actor.rate_limit)
                if shared is not None
                else ActorLimiter(actor.max_concurrency, actor.rate_limit)
            )
            for actor in self.actors.values()
            if actor.max_concurrency is not None or actor.rate_limit is not None
        }
        dispatcher = connection.middleware
        self._actor_run_events = dispatcher.handles("actor_run")
        self._dispatcher = dispatcher

    def request_stop(self) -> None:
        """Start a graceful shutdown: no new messages are taken."""
        if not self._stop.is_set():
            logger.info("worker stopping: no new messages are taken")
            self._stop.set()

    def _count_processed(self) -> None:
        self.processed += 1
        if self._limit is not None and self.processed >= self._limit:
            self.request_stop()

    def _running(self) -> list[Delivery]:
        """Deliveries taken and not settled yet: running, or waiting in the inbox."""
        running = [lane.current for lane in self._lane_states if lane.current is not None]
        if self._inbox is not None:
            running.extend(self._inbox._queue)  # type: ignore[attr-defined]
        return running

    async def _event(
        self,
        kind: EventKind,
        delivery: Delivery,
        started: int | None = None,
        exc: BaseException | None = None,
        due: float | None = None,
    ) -> None:
        key = delivery.key
        trace = None
        if exc is not None and exc.__traceback__ is not None:
            trace = "".join(traceback.format_exception(exc))
        await self._events.emit(
            JobEvent(
                kind,
                key.id_,
                key.topic,
                key.queue,
                delivery.parameters.attempt,
                time.time(),
                None if started is None else (time.time_ns() - started) / 1e9,
                None if exc is None else type(exc).__name__,
                None if exc is None else str(exc),
                self.worker_id,
                trace,
                due,
            )
        )
