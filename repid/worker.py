"""`Worker`: consumes queues, routes each message to its actor and settles the outcome.

Everything that decides what happens to a message lives here, once, for every broker: argument
validation, per-job timeouts, retries with the actor's policy, dead-lettering with the error,
recurring jobs, lease renewal, bounded concurrency and graceful shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import os
import signal
import socket
import time
import traceback
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING, Any

from repid._executor import DaemonThreadPool
from repid.brokers.base import Delivery
from repid.data import DEFAULT_TIMEOUT, DeadLetterInfo, DeadLetterReason, ResultBucket
from repid.dependencies import resolve_dependency
from repid.errors import ConfigurationError, ConsumerClosedError
from repid.ids import new_id
from repid.lifecycle import (
    HEARTBEAT_INTERVAL,
    ActorLimiter,
    EventKind,
    JobCancelledError,
    JobEvent,
    Snooze,
    WorkerInfo,
)
from repid.message import MessageDependency
from repid.retry_policy import retry_delay
from repid.router import ActorData, Router, RouterDefaults

if TYPE_CHECKING:
    from repid.connection import Connection
    from repid.health_check_server import HealthCheckServer, HealthCheckServerSettings

__all__ = ["Runner", "Worker"]

logger = logging.getLogger("repid.worker")

_YIELD_EVERY = 32
"""A lane that never suspends (no-op actors, messages ready) yields to the loop this often."""
_WATCHDOG_INTERVAL = 0.05
"""How often running actors are checked against their deadline (timeouts are >= 1 s)."""


def _start_clock(
    fn: Callable[..., Any], lane: _Lane, clock: Callable[[], float], timeout: float
) -> Callable[..., Any]:
    def timed(*args: Any, **kwargs: Any) -> Any:
        lane.deadline = clock() + timeout  # a float store: safe from another thread
        return fn(*args, **kwargs)

    return timed


_CANCEL_POLL_INTERVAL = 0.1
"""How often running jobs are checked for cancellation requests."""
_DRAIN_WAIT = 0.1
"""In drain mode, how long a lane waits for a ready message before deciding a queue is empty."""


class _DrainedError(Exception):
    """Drain mode: no ready message is left."""


class _Lane:
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
        self.heartbeat_interval = heartbeat_interval
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
        """
        for actor in self.actors.values():  # fail at start-up, not on the first message
            prepare = getattr(actor.converter, "prepare", None)
            if prepare is not None:
                prepare()
        connection = self.connection
        if not connection.is_open:
            await connection.connect()
        if self.auto_declare:
            await self.declare_all_queues()
        runner = Runner(self, connection, drain=drain)
        self._runner = runner
        if self._stop_requested:
            runner.request_stop()
        try:
            await runner.run()
        finally:
            self._stop_requested = False
        if runner.crashed is not None:
            raise RuntimeError("a worker lane crashed (a bug in repid)") from runner.crashed
        return runner

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
        if self._runner is not None:
            self._runner.request_stop()


class Runner:
    """One run of a worker: its lanes, consumers and counters.

    Counters: `processed` (every message taken and settled), `succeeded`, `failed` (attempts
    that raised or timed out), `retried`, `dead_lettered`, `rejected` (returned on shutdown),
    `snoozed`, `cancelled`.
    """

    def __init__(self, worker: Worker, connection: Connection, *, drain: bool = False) -> None:
        self.worker = worker
        self.drain = drain
        self.connection = connection
        self.broker = connection.message_broker
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
        limit = worker.messages_limit
        self._tickets: int | None = None if math.isinf(limit) else math.ceil(limit)
        self._limit = self._tickets
        self._stop = asyncio.Event()
        self._stopping = False
        self._lanes: list[asyncio.Task[None]] = []
        self._lane_states: list[_Lane] = []
        self._lanes_alive = 0
        self._loop_time: Callable[[], float] = time.monotonic
        self._thread_pool: DaemonThreadPool | None = None
        self._process_pool: Executor | None = None
        self._consumers: list[Any] = []
        self._inbox: asyncio.Queue[Delivery] | None = None
        self._stop_taking: Callable[[], Awaitable[None]] | None = None
        self._health: HealthCheckServer | None = None
        self._events = connection.events
        # Limits are shared by every worker of the broker where the broker can share them
        # (`actor_limiter`: the in-memory broker, within its process), else per worker.
        shared = getattr(connection.raw_message_broker, "actor_limiter", None)
        self._limiters: dict[str, ActorLimiter] = {
            actor.name: (
                shared(actor.name, actor.max_concurrency, actor.rate_limit)
                if shared is not None
                else ActorLimiter(actor.max_concurrency, actor.rate_limit)
            )
            for actor in self.actors.values()
            if actor.max_concurrency is not None or actor.rate_limit is not None
        }
        dispatcher = connection.middleware
        self._actor_run_events = dispatcher.handles("actor_run")
        self._dispatcher = dispatcher

    # -- lifecycle ------------------------------------------------------------------------------

    def request_stop(self) -> None:
        if not self._stop.is_set():
            logger.info("worker stopping: no new messages are taken")
            self._stop.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        installed = self._install_signal_handlers(loop)
        try:
            await self._start_health_check()
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(self._shutdown_pools)
                if self.actors:
                    source = await self._open_sources(stack)
                    self._loop_time = loop.time
                    lanes = int(min(self.worker.tasks_limit, self._tickets or math.inf))
                    for i in range(lanes):
                        lane = _Lane()
                        lane.task = asyncio.create_task(
                            self._lane(lane, source), name=f"repid-lane-{i}"
                        )
                        lane.task.add_done_callback(self._on_lane_done)
                        self._lanes_alive += 1
                        self._lane_states.append(lane)
                    self._lanes = [lane.task for lane in self._lane_states]
                    helpers = [self._start_watchdog()]
                    if getattr(self.broker, "cancelled_ids", None) is not None:
                        helpers.append(self._start_cancel_watcher())
                    if getattr(self.broker, "heartbeat", None) is not None:
                        helpers.append(await self._start_heartbeat())
                    renewal = self._start_lease_renewal()
                    if renewal is not None:
                        helpers.append(renewal)
                    try:
                        await self._stop.wait()
                    finally:
                        await self._shutdown()
                        for helper in helpers:
                            helper.cancel()
                        await asyncio.gather(*helpers, return_exceptions=True)
                else:
                    await self._stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self._health is not None:
                await self._health.stop()

    def _on_lane_done(self, task: asyncio.Task[None]) -> None:
        self._lanes_alive -= 1
        if task.cancelled() or task.exception() is None:
            if self.drain and self._lanes_alive == 0:
                self.request_stop()
            return
        logger.critical("a worker lane crashed; stopping the worker", exc_info=task.exception())
        self.crashed = task.exception()
        self.request_stop()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed = []
        for sig in self.worker.handle_signals:
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (ValueError, RuntimeError, NotImplementedError):
                logger.warning("cannot handle %s here (not the main thread?); ignored", sig)
            else:
                installed.append(sig)
        return installed

    async def _start_health_check(self) -> None:
        if not self.worker.run_health_check_server:
            return
        from repid.health_check_server import HealthCheckServer

        self._health = HealthCheckServer(self.worker.health_check_server_settings)
        for middleware in self.connection.middleware.middlewares:
            routes = getattr(middleware, "http_routes", None)
            if routes is not None:
                for path, handler in routes().items():
                    self._health.add_route(path, handler)
        await self._health.start()

    def _set_health(self, healthy: bool) -> None:
        if self._health is not None:
            from repid.health_check_server import HealthCheckStatus

            self._health.set_health_check_status(
                HealthCheckStatus.OK if healthy else HealthCheckStatus.UNHEALTHY
            )

    async def _open_sources(
        self, stack: contextlib.AsyncExitStack
    ) -> Callable[[], Awaitable[Delivery]]:
        prefetch = self.worker.tasks_limit
        queues = sorted({actor.queue for actor in self.actors.values()})
        for name in queues:
            consumer = self.broker.get_consumer(name, None, prefetch)
            await consumer.start()
            stack.push_async_callback(consumer.finish)
            self._consumers.append(consumer)
        if self.drain:
            consumers = list(self._consumers)

            async def take_ready() -> Delivery:
                for consumer in consumers:
                    batch: list[Delivery] = await consumer.fetch(1, _DRAIN_WAIT)
                    if batch:
                        return batch[0]
                raise _DrainedError

            return take_ready
        if len(self._consumers) == 1:
            consume: Callable[[], Awaitable[Delivery]] = self._consumers[0].consume
            return consume
        # Several queues: one pump per consumer feeds a shared inbox. Pumps take messages only
        # while lanes wait for one, so at most one message per pump waits unstarted in the
        # inbox (and the lease renewal covers those too).
        inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._inbox = inbox
        demand = asyncio.Event()
        waiting = 0

        async def pump(consumer: Any) -> None:
            while True:
                await demand.wait()
                delivery = await self._guarded_consume(consumer.consume)
                if delivery is None:
                    return
                inbox.put_nowait(delivery)
                if inbox.qsize() >= waiting:
                    demand.clear()

        async def take() -> Delivery:
            nonlocal waiting
            waiting += 1
            try:
                if waiting > inbox.qsize():
                    demand.set()
                return await inbox.get()
            finally:
                waiting -= 1

        pumps = [asyncio.create_task(pump(c)) for c in self._consumers]

        async def stop_pumps() -> None:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            while not inbox.empty():  # taken but never started: give back at once
                await self._settle("reject", inbox.get_nowait())

        self._stop_taking = stop_pumps
        stack.push_async_callback(stop_pumps)
        return take

    async def _guarded_consume(
        self, consume: Callable[[], Awaitable[Delivery]], error: Exception | None = None
    ) -> Delivery | None:
        """Consume, surviving broker errors with backoff; None when the consumer is closed.

        `error` is a failure the caller already got from `consume()`. While failing, the health
        check says UNHEALTHY; it turns healthy again as soon as a `consume()` call has been
        waiting for a second without failing (an idle worker recovers too).
        """
        backoff = 0.1
        while error is not None:
            if isinstance(error, ConsumerClosedError) or self._stop.is_set():
                return None
            logger.error("consuming failed (%r); retrying in %.1fs", error, backoff)
            self._set_health(False)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
            attempt = asyncio.ensure_future(consume())
            try:
                done, _ = await asyncio.wait({attempt}, timeout=1.0)
                if not done:
                    self._set_health(True)
                    logger.info("consuming works again")
                delivery = await attempt
            except asyncio.CancelledError:
                if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
                    await asyncio.shield(self._settle("reject", attempt.result()))
                attempt.cancel()
                raise
            except ConsumerClosedError:
                return None
            except Exception as exc:
                error = exc
            else:
                self._set_health(True)
                return delivery
        try:
            return await consume()
        except ConsumerClosedError:
            return None
        except Exception as exc:
            return await self._guarded_consume(consume, exc)

    async def _shutdown(self) -> None:
        self._stopping = True
        for lane in self._lane_states:
            if lane.idle:  # waiting for a message: safe to cancel (consume is cancel-safe)
                lane.task.cancel()
        if self._stop_taking is not None:
            await self._stop_taking()
        lanes = self._lanes
        if not lanes:
            return
        _, pending = await asyncio.wait(lanes, timeout=self.worker.graceful_shutdown_time)
        if pending:
            logger.warning(
                "%d actors still running after %.1fs; cancelling them and returning their messages",
                sum(1 for lane in self._lane_states if lane.current is not None),
                self.worker.graceful_shutdown_time,
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)

    def close(self) -> None:
        """Release the thread and process pools (done by `run()` itself when it ends)."""
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=False, cancel_futures=True)

    def _start_lease_renewal(self) -> asyncio.Task[None] | None:
        caps = getattr(self.broker, "capabilities", None)
        if caps is None or not caps.lease_renewal or not caps.lease_duration:
            return None
        interval = caps.lease_duration / 3

        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(interval)
                running = [lane.current for lane in self._lane_states if lane.current is not None]
                if self._inbox is not None:
                    running.extend(self._inbox._queue)  # type: ignore[attr-defined]
                if running:
                    try:
                        await self.broker.renew(running)
                    except Exception:
                        logger.exception("lease renewal failed; will retry")

        return asyncio.create_task(renew_forever(), name="repid-lease-renewal")

    # -- lanes --------------------------------------------------------------------------------

    async def _lane(self, lane: _Lane, source: Callable[[], Awaitable[Delivery]]) -> None:
        since_yield = 0
        while not self._stopping:
            if self._tickets is not None:
                if self._tickets <= 0:
                    return
                self._tickets -= 1
            lane.idle = True
            try:
                delivery = await source()
            except asyncio.CancelledError:
                return  # stopping while waiting for a message (consume is cancel-safe)
            except _DrainedError:
                return
            except Exception as exc:
                recovered = await self._guarded_consume(source, exc)
                if recovered is None:
                    return
                delivery = recovered
            lane.idle = False
            if self._stopping:  # taken in the same instant the stop came: give it back
                await self._settle("reject", delivery)
                return
            lane.current = delivery
            try:
                await self._process(lane, delivery)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug in repid itself must not kill the lane
                logger.exception("unexpected error processing message %s", delivery.key.id_)
                await self._settle("reject", delivery)
            lane.current = None
            self._count_processed()
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    def _start_watchdog(self) -> asyncio.Task[None]:
        """Cancel actors that run past their deadline.

        One task checks every lane a few times a second instead of arming a timer per message;
        timeouts are at least one second, so the precision is ample and the hot path pays only
        for storing a deadline.
        """

        async def watch() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(_WATCHDOG_INTERVAL)
                now = loop.time()
                for lane in self._lane_states:
                    if lane.deadline <= now and not lane.timed_out and not lane.cancel_requested:
                        lane.timed_out = True
                        lane.task.cancel()

        return asyncio.create_task(watch(), name="repid-timeout-watchdog")

    async def _start_heartbeat(self) -> asyncio.Task[None]:
        """Register this worker in the broker's registry and keep it fresh until it stops."""
        host = socket.gethostname()
        worker_id = f"{host}:{os.getpid()}:{new_id()[:8]}"
        started = time.time()
        queues = tuple(sorted({actor.queue for actor in self.actors.values()}))

        def info() -> WorkerInfo:
            in_flight = sum(1 for lane in self._lane_states if lane.current is not None)
            return WorkerInfo(
                worker_id,
                host,
                os.getpid(),
                queues,
                self.worker.tasks_limit,
                in_flight,
                started,
                time.time(),
            )

        await self.broker.heartbeat(info())

        async def beat() -> None:
            try:
                while True:
                    await asyncio.sleep(self.worker.heartbeat_interval)
                    try:
                        await self.broker.heartbeat(info())
                    except Exception:
                        logger.exception("heartbeat failed; will retry")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.broker.unregister_worker(worker_id))

        return asyncio.create_task(beat(), name="repid-heartbeat")

    def _start_cancel_watcher(self) -> asyncio.Task[None]:
        """Cancel running actors whose jobs were cancelled (`Job.cancel`) on any producer."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(_CANCEL_POLL_INTERVAL)
                running = {
                    lane.current.key.id_: lane
                    for lane in self._lane_states
                    if lane.in_actor and lane.current is not None
                }
                if not running:
                    continue
                try:
                    requested = await self.broker.cancelled_ids(list(running))
                except Exception:
                    logger.exception("checking for cancelled jobs failed; will retry")
                    continue
                for job_id in requested:
                    lane = running[job_id]
                    # Still the same actor run, and not already being interrupted?
                    if lane.in_actor and not lane.cancel_requested and not lane.timed_out:
                        lane.cancel_requested = True
                        lane.task.cancel()

        return asyncio.create_task(watch(), name="repid-cancel-watcher")

    # -- processing ---------------------------------------------------------------------------

    async def _process(self, lane: _Lane, delivery: Delivery) -> None:
        params = delivery.parameters
        actor = self.actors.get(delivery.key.topic)
        if actor is None or delivery.decode_error is not None:
            if delivery.decode_error is not None:
                await self._dead_letter(
                    delivery, DeadLetterReason.DECODE_ERROR, message=delivery.decode_error
                )
            else:
                await self._dead_letter(
                    delivery,
                    DeadLetterReason.UNKNOWN_ACTOR,
                    message=f"no actor named {delivery.key.topic!r} in this worker",
                )
            return
        timer = params.timer
        if (
            timer.ttl is not None
            and timer.timestamp.timestamp() + timer.ttl.total_seconds() < time.time()
        ):
            await self._dead_letter(
                delivery, DeadLetterReason.EXPIRED, message="ttl passed before start"
            )
            return
        payload = delivery.payload
        if params.args_id is not None:
            loaded = await self._load_args(params.args_id)
            if loaded is None:
                await self._dead_letter(
                    delivery,
                    DeadLetterReason.VALIDATION_ERROR,
                    message=f"args bucket {params.args_id!r} not found (expired or never stored)",
                )
                return
            payload = loaded
        try:
            args, kwargs = actor.converter.convert_inputs(payload)
        except Exception as exc:
            await self._dead_letter(delivery, DeadLetterReason.VALIDATION_ERROR, exc)
            return
        message: MessageDependency | None = None
        if actor.message_params or actor.depends:
            message = MessageDependency(delivery, self.broker, actor.retry_policy)
            for name in actor.message_params:
                kwargs[name] = message
            try:
                for name, dep in actor.depends.items():
                    kwargs[name] = await resolve_dependency(dep, message, self._run_sync)
            except Exception as exc:
                await self._failed(delivery, actor, exc, DeadLetterReason.EXCEPTION, 0, message)
                return
        limiter = self._limiters.get(actor.name) if self._limiters else None
        if limiter is not None:
            await limiter.acquire()  # a limited job waits its turn; its lease keeps renewing
        try:
            await self._run_actor(lane, delivery, actor, args, kwargs, message)
        finally:
            if limiter is not None:
                limiter.release()

    async def _run_actor(
        self,
        lane: _Lane,
        delivery: Delivery,
        actor: ActorData,
        args: list[Any],
        kwargs: dict[str, Any],
        message: MessageDependency | None,
    ) -> None:
        params = delivery.parameters
        if self._actor_run_events:  # after any limiter wait: the run starts now
            await self._dispatcher.emit(
                "before_actor_run",
                actor=actor,
                key=delivery.key,
                delivery=delivery,
                parameters=params,
                args=args,
                kwargs=kwargs,
            )
        started = time.time_ns()
        if self._events.active:
            await self._event(EventKind.STARTED, delivery)
        timeout_td = params.execution_timeout
        timeout = 600.0 if timeout_td is DEFAULT_TIMEOUT else timeout_td.total_seconds()
        lane.in_actor = True
        try:
            if actor.is_async:
                lane.deadline = self._loop_time() + timeout
                result = await actor.fn(*args, **kwargs)
            elif actor.run_in_process:
                lane.deadline = self._loop_time() + timeout
                result = await self._run_sync(actor.fn, kwargs, True, args)
            else:
                # The clock starts when a pool thread starts the actor, not while it waits
                # for a free thread behind other (possibly timed-out, still running) actors.
                result = await self._run_sync(
                    _start_clock(actor.fn, lane, self._loop_time, timeout), kwargs, False, args
                )
        except asyncio.CancelledError as cancelled:
            lane.end_actor()
            if lane.timed_out or lane.cancel_requested:
                await self._after_run(delivery, actor, args, kwargs, None, lane.interruption())
                await self._interrupted(lane, delivery, actor, started, message)
                return
            await self._after_run(delivery, actor, args, kwargs, None, cancelled)
            if self._stopping:
                logger.info("message %s returned to the queue on shutdown", delivery.key.id_)
                await asyncio.shield(self._settle("reject", delivery))
            raise
        except Snooze as snooze:
            lane.end_actor()
            if lane.timed_out or lane.cancel_requested:
                await self._after_run(delivery, actor, args, kwargs, None, lane.interruption())
                await self._interrupted(lane, delivery, actor, started, message)
                return
            await self._after_run(delivery, actor, args, kwargs, None, snooze)
            await self._snoozed(delivery, snooze)
            return
        except BaseException as exc:  # KeyboardInterrupt/SystemExit from actor code fail too
            lane.end_actor()
            if lane.timed_out or lane.cancel_requested:  # our cancellation, turned into an error
                await self._after_run(delivery, actor, args, kwargs, None, lane.interruption())
                await self._interrupted(lane, delivery, actor, started, message)
            else:
                await self._after_run(delivery, actor, args, kwargs, None, exc)
                await self._failed(
                    delivery, actor, exc, DeadLetterReason.EXCEPTION, started, message
                )
            return
        lane.end_actor()
        if lane.timed_out or lane.cancel_requested:  # the actor swallowed our cancellation
            await self._after_run(delivery, actor, args, kwargs, None, lane.interruption())
            await self._interrupted(lane, delivery, actor, started, message)
            return
        if self._actor_run_events:
            await self._after_run(
                delivery,
                actor,
                args,
                kwargs,
                result,
                message._exception if message is not None else None,
            )
        if message is not None and message._exception is not None:
            await self._failed(
                delivery, actor, message._exception, DeadLetterReason.EXCEPTION, started, message
            )
            return
        if params.result is None and message is None and not params.delay.is_recurring:
            # The common case: nothing to store, just acknowledge.
            self.succeeded += 1
            try:
                await self.broker.ack(delivery)
            except Exception:
                logger.exception(
                    "ack of message %s failed; the broker will deliver it again", delivery.key.id_
                )
            if self._events.active:
                await self._event(EventKind.SUCCEEDED, delivery, started)
            return
        await self._succeeded(delivery, actor, result, started, message)

    async def _after_run(
        self,
        delivery: Delivery,
        actor: ActorData,
        args: list[Any],
        kwargs: dict[str, Any],
        result: Any,
        exception: BaseException | None,
    ) -> None:
        """The `after_actor_run` middleware event, on every way a run ends.

        `exception` is None on success; otherwise what ended the run (the actor's exception, a
        `TimeoutError`, `JobCancelledError`, `Snooze`, or `CancelledError` on shutdown).
        """
        if self._actor_run_events:
            await self._dispatcher.emit(
                "after_actor_run",
                actor=actor,
                key=delivery.key,
                delivery=delivery,
                parameters=delivery.parameters,
                args=args,
                kwargs=kwargs,
                result=result,
                exception=exception,
            )

    async def _interrupted(
        self,
        lane: _Lane,
        delivery: Delivery,
        actor: ActorData,
        started: int,
        message: MessageDependency | None,
    ) -> None:
        if lane.timed_out:
            await self._timed_out(lane, delivery, actor, started, message)
        else:
            await self._cancelled(lane, delivery, started)

    async def _event(
        self,
        kind: EventKind,
        delivery: Delivery,
        started: int | None = None,
        exc: BaseException | None = None,
    ) -> None:
        key = delivery.key
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
            )
        )

    async def _snoozed(self, delivery: Delivery, snooze: Snooze) -> None:
        logger.info("message %s snoozed for %s", delivery.key.id_, snooze.delay)
        self.snoozed += 1
        await self._settle("requeue", delivery, None, delivery.parameters.for_delay(snooze.delay))
        if self._events.active:
            await self._event(EventKind.SNOOZED, delivery)

    async def _cancelled(self, lane: _Lane, delivery: Delivery, started: int) -> None:
        lane.cancel_requested = False
        task = lane.task
        while task.cancelling():
            task.uncancel()
        logger.info("message %s cancelled while running", delivery.key.id_)
        self.cancelled += 1
        exc = JobCancelledError("the job was cancelled while it ran", "JobCancelledError", None)
        try:
            await self._store_result(
                delivery,
                ResultBucket(
                    "null",
                    False,
                    started,
                    time.time_ns(),
                    exception="JobCancelledError: the job was cancelled while it ran",
                    exception_type="JobCancelledError",
                ),
            )
        except Exception:
            logger.exception("storing the cancellation of %s failed", delivery.key.id_)
        await self._settle("ack", delivery)
        done = getattr(self.broker, "cancel_finished", None)
        if done is not None:
            try:
                await done(delivery.key.id_)
            except Exception:
                logger.exception("clearing the cancel request of %s failed", delivery.key.id_)
        if self._events.active:
            await self._event(EventKind.CANCELLED, delivery, started, exc)

    async def process_delivery(self, delivery: Delivery) -> None:
        """Run one delivery to its outcome in the calling task (no lanes, no timeout watchdog).

        Used by `repid.testing` to run actors right when a job is enqueued.
        """
        lane = _Lane()
        task = asyncio.current_task()
        assert task is not None
        lane.task = task
        await self._process(lane, delivery)
        self._count_processed()

    def _count_processed(self) -> None:
        self.processed += 1
        if self._limit is not None and self.processed >= self._limit:
            self.request_stop()

    async def _settle(self, how: str, delivery: Delivery, *args: Any) -> None:
        """Call one settlement on the broker; a failure is logged, never fatal.

        If it failed, the broker still owns the message and will deliver it again
        (lease expiry / unacked redelivery): nothing is lost, a duplicate is possible.
        """
        try:
            await getattr(self.broker, how)(delivery, *args)
        except Exception:
            logger.exception(
                "%s of message %s failed; the broker will deliver it again", how, delivery.key.id_
            )
        if how == "reject":
            self.rejected += 1

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: DeadLetterReason,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> None:
        params = delivery.parameters
        info = DeadLetterInfo(
            reason=reason.value,
            error_type=type(exc).__name__ if exc is not None else None,
            error_message=message if message is not None else (str(exc) if exc else None),
            traceback="".join(traceback.format_exception(exc)) if exc is not None else None,
            attempts=params.attempt,
        )
        logger.warning(  # repr, cut: ids and names may come from foreign bytes
            "message %.200r (%.200r) dead-lettered: %s%.1000s",
            delivery.key.id_,
            delivery.key.topic,
            reason.value,
            f": {info.error_message}" if info.error_message else "",
        )
        self.dead_lettered += 1
        await self._settle("nack", delivery, params.for_dead_letter(info))
        if self._events.active:
            await self._event(EventKind.DEAD_LETTERED, delivery, None, exc)

    async def _timed_out(
        self,
        lane: _Lane,
        delivery: Delivery,
        actor: ActorData,
        started: int,
        message: MessageDependency | None,
    ) -> None:
        lane.timed_out = False
        task = lane.task
        while task.cancelling():
            task.uncancel()
        exc = TimeoutError(
            f"actor {actor.name!r} exceeded its timeout of {delivery.parameters.execution_timeout}"
        )
        await self._failed(delivery, actor, exc, DeadLetterReason.TIMEOUT, started, message)

    async def _load_args(self, args_id: str) -> str | None:
        bucket_broker = self.connection.args_bucket_broker
        if bucket_broker is None:
            return None
        bucket = await bucket_broker.get_bucket(args_id)
        return None if bucket is None else str(bucket.data)

    def _run_sync(
        self,
        fn: Callable[..., Any],
        kwargs: dict[str, Any],
        in_process: bool,
        args: Sequence[Any] = (),
    ) -> asyncio.Future[Any]:
        executor: Executor
        if in_process:
            if self._process_pool is None:
                from concurrent.futures import ProcessPoolExecutor  # multiprocessing: on use

                self._process_pool = ProcessPoolExecutor()
            executor = self._process_pool
        else:
            if self._thread_pool is None:
                self._thread_pool = DaemonThreadPool(
                    max_workers=min(self.worker.tasks_limit, 64), thread_name_prefix="repid-actor"
                )
            executor = self._thread_pool
        call = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        if not in_process:
            # Threads see the caller's context variables (trace context, etc.).
            call = functools.partial(contextvars.copy_context().run, call)
        return asyncio.get_running_loop().run_in_executor(executor, call)

    async def _store_result(self, delivery: Delivery, bucket: ResultBucket) -> None:
        result = delivery.parameters.result
        broker = self.connection.results_bucket_broker
        if result is None or broker is None:
            return
        bucket.ttl = result.ttl
        await broker.store_bucket(result.id_, bucket)

    async def _succeeded(
        self, delivery: Delivery, actor: ActorData, result: Any, started: int, message: Any
    ) -> None:
        self.succeeded += 1
        params = delivery.parameters
        if params.result is not None:
            if message is not None and message._result_set:
                result = message._result
            try:
                data = actor.converter.convert_outputs(result)
            except Exception as exc:
                await self._failed(
                    delivery, actor, exc, DeadLetterReason.EXCEPTION, started, message
                )
                return
            try:
                await self._store_result(
                    delivery, ResultBucket(data, True, started, time.time_ns())
                )
            except Exception:
                # The outcome is not durably recorded: leave the message to be delivered again.
                logger.exception("storing the result of %s failed", delivery.key.id_)
                await self._settle("reject", delivery)
                return
        if message is None or not message.read_only:
            if params.delay.is_recurring:
                await self._settle("requeue", delivery, None, params.for_next_tick())
            else:
                await self._settle("ack", delivery)
        if self._events.active:
            await self._event(EventKind.SUCCEEDED, delivery, started)
        if message is not None:
            await self._callbacks(message)

    async def _failed(
        self,
        delivery: Delivery,
        actor: ActorData,
        exc: BaseException,
        reason: DeadLetterReason,
        started: int,
        message: Any,
    ) -> None:
        self.failed += 1
        params = delivery.parameters
        if self._events.active:
            await self._event(EventKind.FAILED, delivery, started or None, exc)
        if message is not None and message.read_only:
            logger.warning(
                "actor %s raised after settling message %s itself: %r",
                actor.name,
                delivery.key.id_,
                exc,
            )
            await self._callbacks(message)
            return
        if params.retries.left > 0:
            logger.info(
                "actor %s failed on attempt %d of message %s (%r); retrying",
                actor.name,
                params.attempt,
                delivery.key.id_,
                exc,
            )
            try:
                delay = retry_delay(actor.retry_policy, params.retries.actual_amount + 1)
            except Exception:
                logger.exception("retry policy of %s raised; retrying at once", actor.name)
                delay = retry_delay(lambda _n=1: 0, 1)
            self.retried += 1
            await self._settle("requeue", delivery, None, params.for_retry(delay))
            if self._events.active:
                await self._event(EventKind.RETRIED, delivery, started or None, exc)
        else:
            failure = ResultBucket(
                "null",
                False,
                started or time.time_ns(),
                time.time_ns(),
                exception="".join(traceback.format_exception(exc)),
                exception_type=type(exc).__name__,
            )
            try:
                await self._store_result(delivery, failure)
            except Exception:
                logger.exception("storing the failure of %s failed", delivery.key.id_)
            if params.delay.is_recurring:
                logger.error(
                    "recurring job %s failed (%r); it runs again at its next tick",
                    delivery.key.id_,
                    exc,
                )
                await self._settle("requeue", delivery, None, params.for_next_tick())
            else:
                await self._dead_letter(delivery, reason, exc)
        if message is not None:
            await self._callbacks(message)

    async def _callbacks(self, message: Any) -> None:
        for callback in message._callbacks:
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("message callback raised; ignored")
