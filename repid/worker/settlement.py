"""Applying the outcome policy: store the result, tell the broker (`outcome.decide`), count,
emit the lifecycle events and run the message's callbacks."""

from __future__ import annotations

import asyncio
import time
import traceback
from typing import Any

from repid._redact import mask_urls
from repid.brokers.base import Delivery
from repid.data import DEFAULT_TIMEOUT, DeadLetterReason, ResultBucket
from repid.lifecycle import EventKind, JobCancelledError, Snooze
from repid.message import MessageDecision, MessageDependency
from repid.router import ActorData
from repid.worker.execution import Execution
from repid.worker.hooks import run_after_outcome
from repid.worker.outcome import (
    Ack,
    Cancelled,
    DeadLetter,
    Failed,
    Leave,
    Outcome,
    Refused,
    Reject,
    Requeue,
    Settlement,
    Snoozed,
    Succeeded,
    Unrecorded,
    dead_letter,
    decide,
)
from repid.worker.state import Lane, logger


def _decision(message: MessageDependency | None) -> MessageDecision | None:
    return None if message is None else message.decision


class Settling(Execution):
    """Turns the end of a run into its settlement on the broker."""

    async def _settle(self, how: str, delivery: Delivery, *args: Any) -> None:
        """Call one settlement on the broker; a failure is logged, never fatal.

        If it failed, the broker still owns the message and will deliver it again
        (lease expiry / unacked redelivery): nothing is lost, a duplicate is possible.
        """
        self._settled.add(id(delivery))  # even if it fails: the broker owns the message again
        try:
            await getattr(self.broker, how)(delivery, *args)
        except Exception:
            logger.exception(
                "%s of message %s failed; the broker will deliver it again", how, delivery.key.id_
            )
        if how == "reject":
            self.rejected += 1

    async def _conclude(
        self, delivery: Delivery, actor: ActorData | None, outcome: Outcome
    ) -> Settlement:
        """Decide the settlement of `outcome` and apply it."""
        settlement = decide(delivery, actor, outcome, history=self.history)
        await self._apply(delivery, settlement)
        return settlement

    async def _apply(self, delivery: Delivery, settlement: Settlement) -> None:
        match settlement:
            case Ack():
                await self._settle("ack", delivery)
            case Reject():
                await self._settle("reject", delivery)
            case Requeue(parameters=parameters, policy_error=policy_error):
                if policy_error is not None:
                    logger.error(
                        "retry policy of %s raised; retrying at once",
                        delivery.key.topic,
                        exc_info=policy_error,
                    )
                await self._settle("requeue", delivery, None, parameters)
            case DeadLetter(parameters=parameters, info=info, error=error):
                logger.warning(  # repr, cut: ids and names may come from foreign bytes
                    "message %.200r (%.200r) dead-lettered: %s%.1000s",
                    delivery.key.id_,
                    delivery.key.topic,
                    info.reason,
                    f": {mask_urls(' '.join(info.error_message[:2000].split()))}"
                    if info.error_message
                    else "",
                )
                self.dead_lettered += 1
                await self._settle("nack", delivery, parameters)
                if self._events.active:
                    await self._event(EventKind.DEAD_LETTERED, delivery, None, error)
            case Leave():
                pass

    async def _broken(self, delivery: Delivery, error: Exception) -> None:
        """repid's own code raised while handling `delivery`: dead-letter it (`internal_error`)
        unless the broker was already told what to do with it, never reject it in a loop."""
        logger.error("unexpected error processing message %s", delivery.key.id_, exc_info=error)
        if id(delivery) in self._settled:
            return
        try:
            errors = self.history.after(delivery.parameters, None, error)
            settlement: Settlement = dead_letter(
                delivery.parameters, DeadLetterReason.INTERNAL_ERROR, error, errors=errors
            )
            await self._apply(delivery, settlement)
        except Exception:
            logger.exception("dead-lettering message %s failed; returning it", delivery.key.id_)
            await self._settle("reject", delivery)

    async def _after_outcome(
        self, delivery: Delivery, succeeded: bool, started: int | None = None, **more: Any
    ) -> bool:
        """The one call-out after an outcome is recorded, before the broker is told
        (`repid.worker.hooks`); a message without headers costs one check."""
        if not delivery.parameters.headers:
            return True
        return await run_after_outcome(
            connection=self.connection,
            delivery=delivery,
            actors=self.actors,
            succeeded=succeeded,
            started=started,
            **more,
        )

    async def _dead_letter(
        self,
        delivery: Delivery,
        reason: DeadLetterReason,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> None:
        await self._after_outcome(delivery, False, error=message or repr(exc), reason=reason.value)
        await self._conclude(delivery, None, Refused(reason, message, exc))

    async def _store_result(self, delivery: Delivery, bucket: ResultBucket) -> None:
        result = delivery.parameters.result
        broker = self.connection.results_bucket_broker
        if result is None or broker is None:
            return
        bucket.ttl = result.ttl
        await broker.store_bucket(result.id_, bucket)

    async def _snoozed(self, delivery: Delivery, snooze: Snooze) -> None:
        logger.info("message %s snoozed for %s", delivery.key.id_, snooze.delay)
        self.snoozed += 1
        await self._conclude(delivery, None, Snoozed(snooze.delay))
        if self._events.active:
            await self._event(
                EventKind.SNOOZED, delivery, due=time.time() + snooze.delay.total_seconds()
            )

    async def _cancelled(self, lane: Lane, delivery: Delivery, started: int) -> None:
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
        await self._after_outcome(delivery, False, started, error="cancelled", reason="cancelled")
        await self._conclude(delivery, None, Cancelled())
        if self.cancellation is not None:
            try:
                await self.cancellation.cancel_finished(delivery.key.id_)
            except Exception:
                logger.exception("clearing the cancel request of %s failed", delivery.key.id_)
        if self._events.active:
            await self._event(EventKind.CANCELLED, delivery, started, exc)

    async def _timed_out(
        self,
        lane: Lane,
        delivery: Delivery,
        actor: ActorData,
        started: int,
        message: MessageDependency | None,
    ) -> None:
        lane.timed_out = False
        task = lane.task
        while task.cancelling():
            task.uncancel()
        limit = delivery.parameters.execution_timeout
        if limit is DEFAULT_TIMEOUT and actor.timeout is not None:
            limit = actor.timeout
        exc = TimeoutError(f"actor {actor.name!r} exceeded its timeout of {limit}")
        await self._failed(delivery, actor, exc, DeadLetterReason.TIMEOUT, started, message)

    async def _interrupted(
        self,
        lane: Lane,
        delivery: Delivery,
        actor: ActorData,
        started: int,
        message: MessageDependency | None,
    ) -> None:
        if lane.timed_out:
            await self._timed_out(lane, delivery, actor, started, message)
        else:
            await self._cancelled(lane, delivery, started)

    async def _succeeded(
        self,
        delivery: Delivery,
        actor: ActorData,
        result: Any,
        started: int,
        message: MessageDependency | None,
    ) -> None:
        params = delivery.parameters
        decision = _decision(message)
        if params.result is not None:
            if decision is not None and decision.result_set:
                result = decision.result
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
                await self._conclude(delivery, actor, Unrecorded())
                return
        if params.headers and not await self._after_outcome(
            delivery, True, started, output=actor.converter.convert_outputs(result)
        ):
            await self._conclude(delivery, actor, Unrecorded())  # delivered again, hooks rerun
            return
        self.succeeded += 1  # only now: a result that cannot be serialised is a failure alone
        if self.log_jobs:
            self._log_job(delivery, started, "succeeded")
        await self._conclude(delivery, actor, Succeeded(decision))
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
        message: MessageDependency | None,
    ) -> None:
        self.failed += 1
        params = delivery.parameters
        if self.log_jobs:
            self._log_job(delivery, started, "failed", exc)
        if self._events.active:
            await self._event(EventKind.FAILED, delivery, started or None, exc)
        decision = _decision(message)
        settlement = decide(delivery, actor, Failed(exc, reason, decision), history=self.history)
        if isinstance(settlement, Leave):
            logger.warning(
                "actor %s raised after settling message %s itself: %s",
                actor.name,
                delivery.key.id_,
                mask_urls(repr(exc)[:1000]),
            )
        elif isinstance(settlement, Requeue) and settlement.why == "retry":
            logger.info(
                "actor %s failed on attempt %d of message %s (%s); retrying",
                actor.name,
                params.attempt,
                delivery.key.id_,
                mask_urls(repr(exc)[:1000]),
            )
            self.retried += 1
            await self._apply(delivery, settlement)
            if self._events.active:
                when = settlement.parameters.delay.next_execution_time
                due = None if when is None else when.timestamp()
                await self._event(EventKind.RETRIED, delivery, started or None, exc, due)
        else:
            failure = ResultBucket(  # 1.6's layout: the message as data, the class as exception
                str(exc),
                False,
                started or time.time_ns(),
                time.time_ns(),
                exception=type(exc).__name__,
                exception_type=type(exc).__name__,
                traceback="".join(traceback.format_exception(exc)),
                errors=settlement.info.errors
                if isinstance(settlement, DeadLetter)
                else self.history.after(params, actor, exc),
            )
            try:
                await self._store_result(delivery, failure)
            except Exception:
                logger.exception("storing the failure of %s failed", delivery.key.id_)
            if isinstance(settlement, Requeue):  # a recurring job's next tick
                logger.error(
                    "recurring job %s failed (%s); it runs again at its next tick",
                    delivery.key.id_,
                    mask_urls(repr(exc)[:1000]),
                )
            else:
                await self._after_outcome(
                    delivery, False, started or None, error=repr(exc), reason=reason.value
                )
            await self._apply(delivery, settlement)
        if message is not None:
            await self._callbacks(message)

    def _log_job(
        self, delivery: Delivery, started: int, verb: str, exc: BaseException | None = None
    ) -> None:
        """`--log-jobs`: one INFO line per finished run, like Celery's "succeeded in 0.01s"."""
        took = (time.time_ns() - started) / 1e9 if started else 0.0
        error = (
            ""
            if exc is None
            else f": {type(exc).__name__}: {mask_urls(' '.join(str(exc)[:1000].split()))}"
        )
        logger.info(
            "%.200s[%.200s] %s in %.3fs%.500s",
            delivery.key.topic,
            delivery.key.id_,
            verb,
            took,
            error,
        )

    async def _callbacks(self, message: MessageDependency) -> None:
        for callback in message.decision.callbacks:
            try:
                result = callback()
                if asyncio.iscoroutine(result):
                    await result
            except Exception:
                logger.exception("message callback raised; ignored")
