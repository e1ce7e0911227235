"""One delivery from its arrival to the end of its actor run: routing, input checks, argument
conversion, dependency injection, per-actor limits, the timed actor call, middleware events."""

from __future__ import annotations

import asyncio
import inspect
import math
import time
from typing import Any

from repid.brokers.base import Delivery
from repid.data import DEFAULT_TIMEOUT, NO_TIMEOUT, DeadLetterReason
from repid.dependencies import resolve_dependency
from repid.lifecycle import EventKind, Snooze
from repid.message import ActorEnded, MessageDependency
from repid.router import ActorData
from repid.worker.execution import start_clock
from repid.worker.hooks import run_before_run
from repid.worker.settlement import Settling
from repid.worker.state import Lane, logger

_DEFAULT_TIMEOUT_SECONDS = 600.0


class Processing(Settling):
    """Runs one delivery's actor and hands how it ended to the settlement."""

    async def _process(self, lane: Lane, delivery: Delivery) -> None:
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
            message = MessageDependency(
                delivery, self.broker, actor.retry_policy, self.worker.state
            )
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

    async def _load_args(self, args_id: str) -> str | None:
        bucket_broker = self.connection.args_bucket_broker
        if bucket_broker is None:
            return None
        bucket = await bucket_broker.get_bucket(args_id)
        return None if bucket is None else str(bucket.data)

    async def _run_actor(
        self,
        lane: Lane,
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
        if params.headers:
            await run_before_run(self.connection, delivery)
        started = time.time_ns()
        if self._events.active:
            await self._event(EventKind.STARTED, delivery)
        timeout_td = params.execution_timeout
        if timeout_td is DEFAULT_TIMEOUT:  # the Job kept the default: the actor's wins
            timeout = (
                _DEFAULT_TIMEOUT_SECONDS if actor.timeout is None else actor.timeout.total_seconds()
            )
        elif timeout_td == NO_TIMEOUT:
            timeout = math.inf
        else:
            timeout = timeout_td.total_seconds()
        lane.in_actor = True
        try:
            if actor.is_async:
                lane.deadline = self._loop_time() + timeout
                if message is not None and self.worker.settle_ends_actor:
                    message.end_actor_on_settle()
                result = await actor.fn(*args, **kwargs)
            elif actor.run_in_process:
                lane.deadline = self._loop_time() + timeout
                result = await self._run_sync(actor.fn, kwargs, True, args)
            else:
                # The clock starts when a pool thread starts the actor, not while it waits
                # for a free thread behind other (possibly timed-out, still running) actors.
                result = await self._run_sync(
                    start_clock(actor.fn, lane, self._loop_time, timeout), kwargs, False, args
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
        except ActorEnded:  # the actor settled its message (1.6: that ends it)
            lane.end_actor()
            await self._after_run(delivery, actor, args, kwargs, None, None)
            await self._succeeded(delivery, actor, None, started, message)
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
        if not actor.is_async and inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()  # never awaited on purpose: no "never awaited" warning
            error = TypeError(
                f"actor {actor.name!r} is a sync function but returned {type(result).__name__} "
                "(an awaitable); declare it with `async def` so the worker awaits it"
            )
            await self._after_run(delivery, actor, args, kwargs, None, error)
            await self._failed(delivery, actor, error, DeadLetterReason.EXCEPTION, started, message)
            return
        exception = None if message is None else message.decision.exception
        if self._actor_run_events:
            await self._after_run(delivery, actor, args, kwargs, result, exception)
        if exception is not None:
            await self._failed(
                delivery, actor, exception, DeadLetterReason.EXCEPTION, started, message
            )
            return
        validate_output = actor.validate_output
        if validate_output is not None:
            try:
                result = validate_output(result)
            except Exception as exc:
                await self._failed(
                    delivery, actor, exc, DeadLetterReason.OUTPUT_VALIDATION_ERROR, started, message
                )
                return
        delay = params.delay
        if (
            params.result is None
            and message is None
            and delay.defer_by is None
            and delay.cron is None  # not recurring (`DelayProperties.is_recurring`, inlined)
            and params.headers is None  # no after-outcome hook to run (`repid.worker.hooks`)
        ):
            # The common case: nothing to store, just acknowledge.
            self.succeeded += 1
            if self.log_jobs:
                self._log_job(delivery, started, "succeeded")
            self._settled.add(id(delivery))
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
