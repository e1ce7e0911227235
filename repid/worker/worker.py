"""`Worker`: a router that consumes the queues of its actors, routes each message to its actor
and settles the outcome; `run()` starts one `Runner`."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from repid._redact import mask_urls
from repid.errors import BrokerAuthenticationError, BrokerUnavailableError, ConfigurationError
from repid.failures import DEFAULT_ERROR_BYTES, DEFAULT_ERROR_HISTORY
from repid.lifecycle import HEARTBEAT_INTERVAL
from repid.router import Router, RouterDefaults
from repid.worker.retention import install_sweeper, schedule_sweeps, seconds
from repid.worker.runner import Runner
from repid.worker.state import logger

if TYPE_CHECKING:
    from repid.connection import Connection
    from repid.health_check_server import HealthCheckServerSettings

__all__ = ["Worker", "WorkerStatus"]


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    """What a worker is doing (`Worker.status()`).

    Attributes:
        state: "idle" (not running), "running", or "stopping" (a graceful shutdown began).
        worker_id: the id of the current (or last) run, as in `live_workers()` and job records.
        in_flight: actors running now, per actor name (actors with none are left out).
        processed / succeeded / failed / retried / dead_lettered: counters of the current
            (or last) run; `failed` counts failed attempts.
    """

    state: Literal["idle", "running", "stopping"]
    worker_id: str | None
    in_flight: dict[str, int]
    processed: int
    succeeded: int
    failed: int
    retried: int
    dead_lettered: int


class Worker(Router):
    """Runs actors for the messages of the queues its actors listen on.

    Args:
        routers: routers whose actors this worker runs (a worker is itself a router too).
        graceful_shutdown_time: seconds running actors get to finish after a stop signal; then
            they are cancelled and their messages returned to the queue (no attempt counted).
        messages_limit: stop after processing this many messages.
        tasks_limit: at most this many actors run at once (also the broker prefetch).
        handle_signals: signals that start a graceful shutdown (default SIGINT, SIGTERM).
        router_defaults: defaults of the actors registered on the worker directly.
        auto_declare: declare every queue the actors use when `run()` starts.
        run_health_check_server: serve an HTTP health endpoint while running.
        health_check_server_settings: address, port and path of that endpoint.
        heartbeat_interval: seconds between the heartbeats that list this worker as live
            (`Connection.live_workers`); a worker silent for 3 intervals (15 s by default) is
            considered gone.
        prefetch: messages the worker takes from the broker ahead (running and waiting to
            run); never below `tasks_limit`, its default. A higher prefetch saves round trips
            for short actors; at most `tasks_limit` actors run at once whatever it is.
        startup_timeout: seconds `run()` keeps retrying an unreachable broker at start-up,
            with backoff, before it raises `BrokerUnavailableError` (0: raise at once), like
            `repid run --startup-timeout`.
        log_jobs: log one INFO line per finished run ("job[id] succeeded in 0.012s").
        settle_ends_actor: settling a `MessageDependency` from the actor (`ack()`, `nack()`,
            `reject()`, `retry()`, `reschedule()`) ends the actor there, as in repid 1.6.
            False lets the actor go on running after it (the decision stands).
        lifespan: resources that live as long as each `run()`: a function taking the worker
            and returning an async context manager (e.g. an `@asynccontextmanager` function),
            entered after the broker is connected and before the first message, exited after
            the last actor finished. What it yields is `worker.state` and
            `MessageDependency.worker_state` (reachable from `Depends` functions).
        error_history: failed attempts each message keeps (time, type, message, traceback and
            worker of each), carried from retry to retry onto its dead letter and its failed
            result; an actor's `error_history` wins. 0 keeps none.
        error_bytes: bytes of error text a message carries at most (tracebacks are cut in
            the middle to fit; the oldest entries go first).
        dead_letter_ttl: delete the dead letters of the worker's queues once they have been
            dead this long (None: kept until requeued or purged). The sweep runs as a
            recurring job per queue in the `repid_retention` queue, which this worker then
            also consumes: one sweep of a queue at a time, whichever worker takes the job.
        retention_interval: time between two sweeps of a queue (default 5 minutes, at least
            1 second).
    """

    def __init__(
        self,
        routers: Iterable[Router] | None = None,
        *,
        graceful_shutdown_time: float = 25.0,
        messages_limit: int | float = math.inf,
        tasks_limit: int = 1000,
        handle_signals: Sequence[signal.Signals] | None = None,
        router_defaults: RouterDefaults | None = None,
        auto_declare: bool = True,
        run_health_check_server: bool = False,
        health_check_server_settings: HealthCheckServerSettings | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        startup_timeout: float = 60.0,
        prefetch: int | None = None,
        log_jobs: bool = False,
        settle_ends_actor: bool = True,
        lifespan: Callable[[Worker], contextlib.AbstractAsyncContextManager[Any]] | None = None,
        error_history: int = DEFAULT_ERROR_HISTORY,
        error_bytes: int = DEFAULT_ERROR_BYTES,
        dead_letter_ttl: timedelta | float | None = None,
        retention_interval: timedelta | float = 300.0,
        _connection: Connection | None = None,
    ) -> None:
        super().__init__(defaults=router_defaults)
        for router in routers or ():
            self.include_router(router)
        if graceful_shutdown_time < 0:
            raise ConfigurationError("graceful_shutdown_time must be >= 0")
        if messages_limit <= 0:
            raise ConfigurationError("messages_limit must be > 0")
        if tasks_limit < 1:
            raise ConfigurationError("tasks_limit must be >= 1")
        if not heartbeat_interval > 0:
            raise ConfigurationError("heartbeat_interval must be > 0")
        if not startup_timeout >= 0:
            raise ConfigurationError("startup_timeout must be >= 0")
        self.heartbeat_interval = heartbeat_interval
        self.startup_timeout = startup_timeout
        if prefetch is not None and prefetch < 1:
            raise ConfigurationError("prefetch must be >= 1")
        self.prefetch = tasks_limit if prefetch is None else max(prefetch, tasks_limit)
        self.log_jobs = log_jobs
        if error_history < 0:
            raise ConfigurationError("error_history must be >= 0")
        if error_bytes < 1024:
            raise ConfigurationError("error_bytes must be >= 1024")
        self.error_history = error_history
        self.error_bytes = error_bytes
        self.settle_ends_actor = settle_ends_actor
        if lifespan is not None and not callable(lifespan):
            raise ConfigurationError(
                "lifespan must be a function taking the worker and returning an async context "
                "manager (e.g. an @asynccontextmanager function)"
            )
        self.lifespan = lifespan
        self.state: Any = None
        """What `lifespan` yielded, while `run()` runs (None otherwise)."""
        self.retention_interval = seconds(retention_interval, "retention_interval")
        if self.retention_interval < 1.0:
            raise ConfigurationError("retention_interval must be >= 1 second")
        self.dead_letter_ttl = (
            None if dead_letter_ttl is None else seconds(dead_letter_ttl, "dead_letter_ttl")
        )
        if self.dead_letter_ttl is not None:
            install_sweeper(self, lambda: self.connection, self.dead_letter_ttl)
        self.graceful_shutdown_time = graceful_shutdown_time
        self.messages_limit = messages_limit
        self.tasks_limit = tasks_limit
        self.handle_signals = (
            [signal.SIGINT, signal.SIGTERM] if handle_signals is None else list(handle_signals)
        )
        self.auto_declare = auto_declare
        self.run_health_check_server = run_health_check_server
        self.health_check_server_settings = health_check_server_settings
        self._connection = _connection
        self._runner: Runner | None = None
        self._stop_requested = False
        self._running = False
        self._startup_wait: asyncio.Event | None = None

    @property
    def connection(self) -> Connection:
        if self._connection is not None:
            return self._connection
        from repid.main import Repid

        return Repid.get_magic_connection()

    @property
    def bound_connection(self) -> Connection | None:
        """The connection given to this worker, if any (else it uses the default one)."""
        return self._connection

    @property
    def queues(self) -> list[str]:
        """Names of the queues the worker's actors listen on."""
        return sorted({actor.queue for actor in self.actors.values()})

    async def declare_all_queues(self) -> None:
        broker = self.connection.message_broker
        for name in self.queues:
            await broker.queue_declare(name)

    async def run(self, *, drain: bool = False) -> Runner:
        """Consume until `messages_limit` messages are processed or a stop signal arrives.

        Args:
            drain: process what is ready now and return once the worker's queues have no
                ready message left (CI jobs, cron-style runs). Delayed messages that are not
                due yet are left for later.

        Returns the runner, whose counters (`processed`, ...) describe what happened.

        Raises:
            RuntimeError: this worker is already running (one `run()` at a time per worker;
                create another `Worker` to consume in parallel).
        """
        if self._running:
            raise RuntimeError(
                "this worker is already running: one run() at a time per Worker "
                "(create another Worker to consume in parallel)"
            )
        self._running = True
        try:
            return await self._run(drain)
        finally:
            self._running = False

    async def _run(self, drain: bool) -> Runner:
        loop = asyncio.get_running_loop()
        # A stop signal during start-up (connecting, declaring) stops the run gracefully, as
        # 1.6 did; the runner replaces these handlers with its own (no gap between the two) and
        # removes them when it ends.
        early = _install_handlers(loop, self.handle_signals, self.stop)
        resources = contextlib.AsyncExitStack()  # the lifespan's
        try:
            try:
                for actor in self.actors.values():  # fail at start-up, not on the first message
                    prepare = getattr(actor.converter, "prepare", None)
                    if prepare is not None:
                        prepare()
                    actor.refresh_output_check()
                connection = self.connection
                await self._start_patiently(connection)
                if self.lifespan is not None:
                    self.state = await resources.enter_async_context(self._lifespan_manager())
                runner = Runner(self, connection, drain=drain)
                self._runner = runner
                if self._stop_requested:
                    runner.request_stop()
            except BaseException:
                for sig in early:
                    loop.remove_signal_handler(sig)
                self.state = None
                await resources.aclose()
                raise
            try:
                await runner.run()
            finally:
                self._stop_requested = False
                self.state = None
                await resources.aclose()  # the lifespan ends after the last actor
        except asyncio.CancelledError:
            logger.critical("Worker was cancelled.")
            raise
        if runner.crashed is not None:
            raise RuntimeError("a worker lane crashed (a bug in repid)") from runner.crashed
        return runner

    def _lifespan_manager(self) -> contextlib.AbstractAsyncContextManager[Any]:
        assert self.lifespan is not None
        manager = self.lifespan(self)
        if not isinstance(manager, contextlib.AbstractAsyncContextManager):
            raise ConfigurationError(
                f"lifespan returned {type(manager).__name__}, not an async context manager"
            )
        return manager

    async def _start(self, connection: Connection) -> None:
        if not connection.is_open:
            await connection.connect()
        if self.auto_declare:
            await self.declare_all_queues()
        if self.dead_letter_ttl is not None:
            await schedule_sweeps(connection, self.queues, self.retention_interval)

    async def _start_patiently(self, connection: Connection) -> None:
        """Connect, declare the queues and schedule the sweeps, retrying all of it with backoff
        while the broker is unreachable (`startup_timeout`), also when it goes away after the
        connection; a `stop()` while it waits ends the wait with the last error."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.startup_timeout
        pause = 0.25
        while True:
            try:
                await self._start(connection)
                return
            except BrokerAuthenticationError:
                raise  # a refused login does not heal by waiting: say it at once
            except BrokerUnavailableError as exc:
                left = deadline - loop.time()
                if left <= 0 or self._stop_requested:
                    raise
                logger.warning(
                    "the broker is unreachable (%s); retrying for up to %.1f s more",
                    mask_urls(str(exc)),
                    left,
                )
            self._startup_wait = asyncio.Event()
            with contextlib.suppress(TimeoutError):  # a stop() ends the pause at once
                await asyncio.wait_for(
                    self._startup_wait.wait(), min(pause, max(0.0, deadline - loop.time()))
                )
            self._startup_wait = None
            pause = min(pause * 2, 2.0)

    @property
    def is_running(self) -> bool:
        """Whether `run()` is running (from start-up until it returns)."""
        return self._running

    def status(self) -> WorkerStatus:
        """What the worker is doing now: its state, actors in flight and counters."""
        runner = self._runner
        if runner is None:
            return WorkerStatus("running" if self._running else "idle", None, {}, 0, 0, 0, 0, 0)
        in_flight: dict[str, int] = {}
        for lane in runner._lane_states:
            if lane.current is not None:
                topic = lane.current.key.topic
                in_flight[topic] = in_flight.get(topic, 0) + 1
        stopping = self._running and (runner._stop.is_set() or self._stop_requested)
        return WorkerStatus(
            "stopping" if stopping else "running" if self._running else "idle",
            runner.worker_id,
            in_flight,
            runner.processed,
            runner.succeeded,
            runner.failed,
            runner.retried,
            runner.dead_lettered,
        )

    @property
    def health_check_port(self) -> int | None:
        """The port the health check server is bound to while `run()` runs, else None.

        Useful with `HealthCheckServerSettings(port=0)`. The same port serves `/metrics` when the
        connection uses `PrometheusMiddleware`.
        """
        runner = self._runner
        server = None if runner is None else runner._health
        if server is None:
            return None
        try:
            return server.port
        except RuntimeError:  # stopped
            return None

    def stop(self) -> None:
        """Start a graceful shutdown (like receiving SIGTERM); also works before `run()` starts."""
        self._stop_requested = True
        if self._startup_wait is not None:
            self._startup_wait.set()
        if self._runner is not None:
            self._runner.request_stop()


def _install_handlers(
    loop: asyncio.AbstractEventLoop,
    signals: Sequence[signal.Signals],
    handler: Callable[[], None],
) -> list[signal.Signals]:
    """`handler` for each of `signals` that can be handled here (the main thread's loop)."""
    installed = []
    for sig in signals:
        try:
            loop.add_signal_handler(sig, handler)
        except (ValueError, RuntimeError, NotImplementedError):
            continue  # not the main thread: the runner says so once
        installed.append(sig)
    return installed
