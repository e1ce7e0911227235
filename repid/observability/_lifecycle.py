"""Turns repid's raw middleware events into a job's lifecycle: enqueued, started, ran, finished.

Logging, metrics and tracing all need the same correlation (which settlement ends which actor
run, and what it means), so it is written once here and each of them overrides a few hooks.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from repid.data import Parameters, RoutingKey
from repid.lifecycle import JobCancelledError, Snooze

__all__ = ["JobLifecycleMiddleware", "JobRun", "Outcome"]

_MAX_TRACKED_RUNS = 100_000
"""Runs whose settlement never arrives (a bug elsewhere) are forgotten past this many."""


class Outcome(enum.StrEnum):
    """How an actor run (or a message that never reached its actor) ended."""

    SUCCEEDED = "succeeded"
    """Acknowledged after the actor returned (or a recurring job moved to its next tick)."""
    RETRIED = "retried"
    """The attempt failed and the message was sent back for another attempt."""
    DEAD_LETTERED = "dead_lettered"
    """The message went to the dead part of its queue (error, bad input, expired, manual)."""
    FAILED = "failed"
    """A recurring job failed; it runs again at its next tick."""
    RESCHEDULED = "rescheduled"
    """The actor deferred its own message (`message.reschedule()` and similar)."""
    RETURNED = "returned"
    """Given back to the queue without counting an attempt (shutdown, result not stored)."""
    CANCELLED = "cancelled"
    """The job was cancelled (`Job.cancel()`) while its actor ran; recorded, not retried."""
    SNOOZED = "snoozed"
    """The actor raised `Snooze`: the same attempt runs again after the delay."""


_FAILURES = (Outcome.RETRIED, Outcome.FAILED, Outcome.DEAD_LETTERED)


@dataclass(slots=True)
class JobRun:
    """One actor run, from `before_actor_run` to the settlement of its message.

    Attributes:
        key: the routing key (`id_`, `topic` = actor name, `queue`).
        attempt: 1-based attempt number of this run.
        headers: the message headers (trace context travels there).
        delivery: the `Delivery` the run belongs to (None for a settlement by routing key).
        started: `time.perf_counter()` when the actor started; None when it never ran
            (a dead letter for bad input).
        duration: seconds the actor ran, set when it stopped (or when its message was settled,
            if the actor settled it itself while running).
        ended: the actor stopped running (`job_ran` was called).
        returned: the actor function returned normally (no exception ended the run).
        outcome: set once the message is settled.
        dead_letter_reason: the `DeadLetterReason` value when the outcome is a dead letter.
        error_type / error_message / traceback: what failed, for failed runs (retried, failed,
            dead-lettered) when known.
        exception: what ended the run, None if the actor returned: the actor's exception, a
            `TimeoutError` (timeout), `JobCancelledError` (cancellation), `Snooze`, or
            `asyncio.CancelledError` (shutdown).
        state: free slot for the middleware that owns the run (e.g. an OpenTelemetry span).
    """

    key: RoutingKey
    attempt: int
    headers: Mapping[str, str] | None
    delivery: Any = None
    started: float | None = None
    duration: float | None = None
    ended: bool = False
    returned: bool = False
    outcome: Outcome | None = None
    dead_letter_reason: str | None = None
    error_type: str | None = None
    error_message: str | None = None
    traceback: str | None = None
    exception: BaseException | None = None
    state: Any = None

    @property
    def job_id(self) -> str:
        return self.key.id_

    @property
    def actor(self) -> str:
        return self.key.topic

    @property
    def queue(self) -> str:
        return self.key.queue

    @property
    def failed(self) -> bool:
        """The actor ran and its message was then retried, dead-lettered or (recurring) failed."""
        return self.started is not None and self.outcome in _FAILURES


def _routing_key(key: Any) -> RoutingKey:
    inner = getattr(key, "key", key)  # a Delivery carries its RoutingKey
    return (
        inner if isinstance(inner, RoutingKey) else RoutingKey(inner.id_, inner.topic, inner.queue)
    )


def _match(delivery: Any) -> Hashable:
    """What ties a settlement to its run: the delivery's broker handle, else the object itself.

    Two deliveries of one job (a duplicate after a lease expired) have different handles, so
    they are told apart; a settlement made with an equal copy of the delivery still matches.
    """
    handle = getattr(delivery, "handle", None)
    if handle is not None:
        try:
            hash(handle)
        except TypeError:
            pass
        else:
            return ("handle", delivery.queue, delivery.id_, handle)
    # The run keeps the delivery alive, so its id is not reused while the run is tracked.
    return ("object", id(delivery))


class JobLifecycleMiddleware:
    """A middleware base: override `job_enqueued`, `job_started`, `job_ran`, `job_finished`.

    A run is matched to its settlement by its `Delivery` (its broker handle, or the object).
    It is finished by the first settlement of its message. When the actor settles its own
    message while still running (`MessageDependency`), `job_finished` comes before `job_ran`
    and the duration ends at that settlement; otherwise `job_ran` comes first.
    """

    def __init__(self) -> None:
        self._runs: dict[Hashable, JobRun] = {}

    # -- hooks for subclasses -----------------------------------------------------------------

    def job_enqueued(self, key: RoutingKey, params: Parameters | None) -> None:
        """The broker accepted a message."""

    def job_enqueue_failed(
        self, key: RoutingKey, params: Parameters | None, exception: BaseException
    ) -> None:
        """The broker call that enqueues a message raised `exception` (it then propagates)."""

    def job_started(self, run: JobRun) -> None:
        """An actor is about to run."""

    def job_ran(self, run: JobRun) -> None:
        """The actor stopped running; `run.exception` says why (None: it returned).

        Called once per started run, in the task that ran it, right after the actor stopped;
        the outcome is usually not known yet (it is if the actor settled its own message).
        """

    def job_finished(self, run: JobRun) -> None:
        """A message was settled; `run.outcome` says how. `run.started` is None if it never ran."""

    # -- middleware events --------------------------------------------------------------------

    def after_enqueue(
        self, key: RoutingKey, params: Parameters | None, exception: BaseException | None = None
    ) -> None:
        if exception is None:
            self.job_enqueued(key, params)
        else:
            self.job_enqueue_failed(key, params, exception)

    def before_actor_run(self, delivery: Any, parameters: Parameters) -> None:
        run = JobRun(
            _routing_key(delivery),
            parameters.attempt,
            parameters.headers,
            delivery=delivery,
            started=time.perf_counter(),
        )
        if len(self._runs) >= _MAX_TRACKED_RUNS:
            del self._runs[next(iter(self._runs))]
        self._runs[_match(delivery)] = run
        self.job_started(run)

    def after_actor_run(self, delivery: Any, exception: BaseException | None = None) -> None:
        match = _match(delivery)
        run = self._runs.get(match)
        if run is None or run.ended or run.started is None:
            return
        run.ended = True
        run.returned = exception is None
        run.exception = exception
        if run.duration is None:
            run.duration = time.perf_counter() - run.started
        if run.outcome is not None:  # the actor settled its message itself: already finished
            del self._runs[match]
        self.job_ran(run)
        if run.outcome is None and isinstance(exception, asyncio.CancelledError):
            # Shutdown (or the caller cancelled the run): the message goes back to the queue,
            # rejected now or redelivered when its lease expires. Nothing else will settle it.
            del self._runs[match]
            self._finish(run, Outcome.RETURNED)

    def before_ack(self, key: Any) -> None:
        run = self._take(key)
        if run is not None:  # else: an acknowledgement of a message no actor ran here
            cancelled = isinstance(run.exception, JobCancelledError)
            self._finish(run, Outcome.CANCELLED if cancelled else Outcome.SUCCEEDED)

    def before_reject(self, key: Any) -> None:
        run = self._take(key)
        if run is not None:
            self._finish(run, Outcome.RETURNED)

    def before_nack(self, key: Any, parameters: Parameters | None) -> None:
        run = self._take(key) or self._unstarted(key)
        info = parameters.dead_letter if parameters is not None else None
        if info is not None:
            run.dead_letter_reason = info.reason
            run.error_type = info.error_type
            run.error_message = info.error_message
            run.traceback = info.traceback
        self._finish(run, Outcome.DEAD_LETTERED)

    def before_requeue(self, key: Any, params: Parameters | None) -> None:
        previous: Parameters | None = getattr(key, "parameters", None)
        retried = (
            params is not None
            and previous is not None
            and params.retries.actual_amount > previous.retries.actual_amount
        )
        run = self._take(key)
        if run is None:
            if retried:  # failed before its actor ran (a dependency raised)
                self._finish(self._unstarted(key), Outcome.RETRIED)
            return  # else: an admin requeue (`repid dead retry`)
        if retried:
            outcome = Outcome.RETRIED
        elif isinstance(run.exception, Snooze):
            outcome = Outcome.SNOOZED
        elif not run.ended:
            outcome = Outcome.RESCHEDULED  # by the actor itself, while it runs
        elif run.exception is not None:
            outcome = Outcome.FAILED  # a recurring job, sent to its next tick
        else:
            outcome = Outcome.SUCCEEDED  # a recurring job, sent to its next tick
        self._finish(run, outcome)

    # -- internals ----------------------------------------------------------------------------

    def _take(self, key: Any) -> JobRun | None:
        """The unsettled run of this delivery, if any; untracked once the actor has stopped."""
        match = _match(key)
        run = self._runs.get(match)
        if run is None or run.outcome is not None:
            return None
        if run.ended:
            del self._runs[match]
        # else the actor is still running: `after_actor_run` removes the run
        return run

    def _unstarted(self, key: Any) -> JobRun:
        parameters: Parameters | None = getattr(key, "parameters", None)
        return JobRun(
            _routing_key(key),
            parameters.attempt if parameters is not None else 1,
            parameters.headers if parameters is not None else None,
            delivery=key,
        )

    def _finish(self, run: JobRun, outcome: Outcome) -> None:
        run.outcome = outcome
        if run.started is not None and run.duration is None:
            run.duration = time.perf_counter() - run.started
        if outcome in _FAILURES and run.error_type is None and run.exception is not None:
            run.error_type = type(run.exception).__name__
            run.error_message = str(run.exception)
        self.job_finished(run)
