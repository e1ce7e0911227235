"""Turns repid's raw middleware events into a job's lifecycle: enqueued, started, finished.

Logging, metrics and tracing all need the same correlation (which settlement ends which actor
run, and what it means), so it is written once here and each of them overrides three hooks.
"""

from __future__ import annotations

import asyncio
import enum
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from repid.data import Parameters, RoutingKey

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


@dataclass(slots=True)
class JobRun:
    """One actor run, from `before_actor_run` to the settlement of its message.

    Attributes:
        key: the routing key (`id_`, `topic` = actor name, `queue`).
        attempt: 1-based attempt number of this run.
        headers: the message headers (trace context travels there).
        started: `time.perf_counter()` when the actor started; None when it never ran
            (a dead letter for bad input).
        duration: seconds the actor ran, set when it returned or when its message was settled.
        returned: the actor function returned normally.
        outcome: set once the message is settled.
        dead_letter_reason: the `DeadLetterReason` value when the outcome is a dead letter.
        error_type / error_message / traceback: what failed, when known.
        exception: the exception object when it is available (not for every failure).
        state: free slot for the middleware that owns the run (e.g. an OpenTelemetry span).
    """

    key: RoutingKey
    attempt: int
    headers: Mapping[str, str] | None
    started: float | None = None
    duration: float | None = None
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
        failed = (Outcome.RETRIED, Outcome.FAILED, Outcome.DEAD_LETTERED)
        return self.started is not None and self.outcome in failed


def _routing_key(key: Any) -> RoutingKey:
    inner = getattr(key, "key", key)  # a Delivery carries its RoutingKey
    return (
        inner if isinstance(inner, RoutingKey) else RoutingKey(inner.id_, inner.topic, inner.queue)
    )


def _current_error() -> BaseException | None:
    """The exception being handled by the caller, if the settlement happens in an except block.

    The worker settles a failed run from inside the handler of the actor's exception (or of the
    `CancelledError` its timeout watchdog raised), so this recovers what no event carries yet.
    Best effort: None when the settlement is not made while handling an exception.
    """
    return sys.exc_info()[1]


class JobLifecycleMiddleware:
    """A middleware base: override `job_enqueued`, `job_started` and `job_finished`.

    Runs are matched to their settlement by the identity of the delivery's routing key, so two
    deliveries of the same job id (a duplicate) are told apart. A run is finished by the first
    settlement of its message; when the actor settles its own message while still running
    (`MessageDependency`), the duration ends at that settlement.
    """

    def __init__(self) -> None:
        self._runs: dict[int, JobRun] = {}

    # -- hooks for subclasses -----------------------------------------------------------------

    def job_enqueued(self, key: RoutingKey, params: Parameters | None) -> None:
        """A message was handed to the broker."""

    def job_started(self, run: JobRun) -> None:
        """An actor is about to run."""

    def job_finished(self, run: JobRun) -> None:
        """A message was settled; `run.outcome` says how. `run.started` is None if it never ran."""

    # -- middleware events --------------------------------------------------------------------

    def after_enqueue(self, key: RoutingKey, params: Parameters | None) -> None:
        self.job_enqueued(key, params)

    def before_actor_run(self, key: RoutingKey, parameters: Parameters) -> None:
        run = JobRun(key, parameters.attempt, parameters.headers, started=time.perf_counter())
        if len(self._runs) >= _MAX_TRACKED_RUNS:
            del self._runs[next(iter(self._runs))]
        self._runs[id(key)] = run
        self.job_started(run)

    def after_actor_run(self, key: RoutingKey) -> None:
        run = self._runs.get(id(key))
        if run is not None and run.key is key and run.started is not None:
            run.returned = True
            run.duration = time.perf_counter() - run.started

    def before_ack(self, key: Any) -> None:
        self._settled(key, Outcome.SUCCEEDED, report_unstarted=False)

    def before_reject(self, key: Any) -> None:
        self._settled(key, Outcome.RETURNED, report_unstarted=False)

    def before_nack(self, key: Any, parameters: Parameters | None) -> None:
        run = self._settled(key, Outcome.DEAD_LETTERED, finish=False)
        if run is None:
            return
        info = parameters.dead_letter if parameters is not None else None
        if info is not None:
            run.dead_letter_reason = info.reason
            run.error_type = info.error_type
            run.error_message = info.error_message
            run.traceback = info.traceback
        self._finish(run)

    def before_requeue(self, key: Any, params: Parameters | None) -> None:
        previous: Parameters | None = getattr(key, "parameters", None)
        if (
            params is not None
            and previous is not None
            and params.retries.actual_amount > previous.retries.actual_amount
        ):
            self._settled(key, Outcome.RETRIED)
            return
        run = self._runs.get(id(_routing_key(key)))
        if run is None or run.returned:
            # A recurring job moving to its next tick after success, or an admin requeue.
            self._settled(key, Outcome.SUCCEEDED, report_unstarted=False)
        elif _current_error() is not None:
            self._settled(key, Outcome.FAILED)
        else:
            self._settled(key, Outcome.RESCHEDULED)

    # -- internals ----------------------------------------------------------------------------

    def _settled(
        self, key: Any, outcome: Outcome, *, finish: bool = True, report_unstarted: bool = True
    ) -> JobRun | None:
        routing_key = _routing_key(key)
        run = self._runs.pop(id(routing_key), None)
        if run is None or run.key is not routing_key:
            if not report_unstarted:
                return None
            parameters: Parameters | None = getattr(key, "parameters", None)
            run = JobRun(
                routing_key,
                parameters.attempt if parameters is not None else 1,
                parameters.headers if parameters is not None else None,
            )
        run.outcome = outcome
        if run.started is not None and run.duration is None:
            run.duration = time.perf_counter() - run.started
        if outcome in (Outcome.RETRIED, Outcome.FAILED, Outcome.DEAD_LETTERED):
            error = _current_error()
            if isinstance(error, asyncio.CancelledError):  # the timeout watchdog cancelled it
                run.error_type = "TimeoutError"
                run.error_message = "the actor exceeded its timeout"
            elif error is not None:
                run.exception = error
                run.error_type = type(error).__name__
                run.error_message = str(error)
        if finish:
            self._finish(run)
        return run

    def _finish(self, run: JobRun) -> None:
        self.job_finished(run)
