"""The outcome policy: what happens to a delivery once its run ended, as a pure function.

`decide(delivery, actor, outcome)` maps how a run ended (`Outcome`) to what the broker is told
(`Settlement`): ack, requeue with a delay, dead letter, reject, or nothing when the actor settled
the message itself. It performs no I/O; the runner applies its answer (`repid.worker.settlement`).
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Literal

from repid.data import _NO_RETRIES, DeadLetterInfo, DeadLetterReason, Parameters, RetriesProperties
from repid.failures import (
    DEFAULT_ERROR_BYTES,
    DEFAULT_ERROR_HISTORY,
    ErrorEntry,
    capped,
    error_entry,
)
from repid.retry_policy import retry_delay

if TYPE_CHECKING:
    from repid.brokers.base import Delivery
    from repid.message import MessageDecision
    from repid.router import ActorData

__all__ = [
    "Ack",
    "Broken",
    "Cancelled",
    "DeadLetter",
    "ErrorHistory",
    "Failed",
    "Leave",
    "Outcome",
    "Refused",
    "Reject",
    "Requeue",
    "Settlement",
    "ShutDown",
    "Snoozed",
    "Succeeded",
    "Unrecorded",
    "decide",
]


@dataclass(frozen=True, slots=True)
class ErrorHistory:
    """How much of its failures a message keeps: the last `keep` failed attempts in at most
    `max_bytes` of text (`Worker(error_history=, error_bytes=)`; an actor's `error_history`
    wins), each naming `worker`."""

    keep: int = DEFAULT_ERROR_HISTORY
    max_bytes: int = DEFAULT_ERROR_BYTES
    worker: str | None = None

    def after(
        self,
        params: Parameters,
        actor: ActorData | None,
        error: BaseException | None,
        message: str | None = None,
    ) -> tuple[ErrorEntry, ...]:
        """The message's history once the attempt of `params` failed with `error`."""
        keep = self.keep if actor is None or actor.error_history is None else actor.error_history
        if keep <= 0:
            return ()
        entry = error_entry(
            error, params.attempt, self.worker, message=message, limit=self.max_bytes
        )
        return capped(params.errors, entry, keep, self.max_bytes)


NO_HISTORY = ErrorHistory(keep=0)


# -- how a run ended ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Succeeded:
    """The actor returned (`decision`: what it decided through its `MessageDependency`)."""

    decision: MessageDecision | None = None


@dataclass(frozen=True, slots=True)
class Failed:
    """The actor raised or timed out (`reason`: `EXCEPTION` or `TIMEOUT`)."""

    error: BaseException
    reason: DeadLetterReason = DeadLetterReason.EXCEPTION
    decision: MessageDecision | None = None


@dataclass(frozen=True, slots=True)
class Snoozed:
    """The actor asked to run again after `delay` (`Snooze`)."""

    delay: timedelta


@dataclass(frozen=True, slots=True)
class Cancelled:
    """The job was cancelled (`Job.cancel`) while it ran."""


@dataclass(frozen=True, slots=True)
class ShutDown:
    """The worker stopped before the run ended, or before it started."""


@dataclass(frozen=True, slots=True)
class Unrecorded:
    """The run ended but its result could not be stored: the outcome is not durable yet."""


@dataclass(frozen=True, slots=True)
class Refused:
    """The message cannot run at all (bad payload, unknown actor, invalid args, expired)."""

    reason: DeadLetterReason
    detail: str | None = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Broken:
    """repid's own code failed while handling the message (a bug, not the actor's)."""

    error: BaseException


Outcome = Succeeded | Failed | Snoozed | Cancelled | ShutDown | Unrecorded | Refused | Broken

# -- what the broker is told -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Ack:
    """Done: remove the message."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Publish the message again with `parameters` (its new due time and attempt count).

    `why` is "retry" (an attempt counted), "next_tick" (a recurring job's next run) or
    "snooze"; `policy_error` is set when the retry policy raised and the retry is immediate.
    """

    parameters: Parameters
    why: Literal["retry", "next_tick", "snooze"]
    policy_error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """Move the message to the dead part of its queue, with `info` (why, error, attempts)."""

    parameters: Parameters
    info: DeadLetterInfo
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class Reject:
    """Return the message to its queue without counting an attempt."""


@dataclass(frozen=True, slots=True)
class Leave:
    """Nothing: the actor settled the message itself."""


Settlement = Ack | Requeue | DeadLetter | Reject | Leave


def decide(
    delivery: Delivery,
    actor: ActorData | None,
    outcome: Outcome,
    *,
    now: datetime | None = None,
    history: ErrorHistory = NO_HISTORY,
) -> Settlement:
    """The settlement of `delivery` after `outcome` (`actor`: None when no actor ran it).

    - success: ack, or the next tick of a recurring job;
    - failure: a retry after `actor.retry_policy(n)` while retries are left, then the next
      tick of a recurring job, else a dead letter with the error;
    - snooze: requeue after its delay; cancellation: ack; shutdown or an unrecorded result:
      reject (delivered again, no attempt counted);
    - refused input and repid's own errors: a dead letter with the reason;
    - a schedule whose next tick cannot be computed (bad cron, croniter missing, an interval
      <= 0): a dead letter with reason `schedule_error`, never an endless redelivery.
    The actor's own settlement (`MessageDependency.ack()`, ...) always wins: `Leave`.
    A failed attempt adds its error to the message's history (`history`), which the retry
    carries and the dead letter keeps.
    """
    params = delivery.parameters
    if actor is not None and actor.retries is not None and params.retries is _NO_RETRIES:
        # the Job left `retries` unset: the actor's default applies
        params = params._replace(retries=RetriesProperties(actor.retries, 0))
    match outcome:
        case Succeeded(decision=decision):
            if decision is not None and decision.settled:
                return Leave()
            if params.delay.is_recurring:
                return _next_tick(params, now)
            return Ack()
        case Failed(error=error, reason=reason, decision=decision):
            if decision is not None and decision.settled:
                return Leave()
            errors = history.after(params, actor, error)
            if actor is not None and params.retries.left > 0:
                return _retry(params, actor, errors)
            if params.delay.is_recurring:
                return _next_tick(params, now)
            return dead_letter(params, reason, error, errors=errors)
        case Snoozed(delay=delay):
            return Requeue(params.for_delay(delay), "snooze")
        case Cancelled():
            return Ack()
        case ShutDown() | Unrecorded():
            return Reject()
        case Refused(reason=reason, detail=detail, error=error):
            errors = history.after(params, actor, error, detail)
            return dead_letter(params, reason, error, detail, errors)
        case Broken(error=error):
            errors = history.after(params, actor, error)
            return dead_letter(params, DeadLetterReason.INTERNAL_ERROR, error, errors=errors)
    raise AssertionError(f"unknown outcome {outcome!r}")  # pragma: no cover


def dead_letter(
    params: Parameters,
    reason: DeadLetterReason,
    error: BaseException | None = None,
    detail: str | None = None,
    errors: tuple[ErrorEntry, ...] = (),
) -> DeadLetter:
    """A dead letter for `reason`, keeping the error's type, message and traceback, and the
    message's error history `errors`."""
    info = DeadLetterInfo(
        reason=reason.value,
        error_type=type(error).__name__ if error is not None else None,
        error_message=detail if detail is not None else (str(error) if error else None),
        traceback="".join(traceback.format_exception(error)) if error is not None else None,
        attempts=params.attempt,
        errors=errors,
    )
    return DeadLetter(params.for_dead_letter(info), info, error)


def _retry(params: Parameters, actor: ActorData, errors: tuple[ErrorEntry, ...]) -> Requeue:
    try:
        delay = retry_delay(actor.retry_policy, params.retries.actual_amount + 1)
    except Exception as exc:
        return Requeue(params.for_retry(timedelta(0), errors), "retry", exc)
    return Requeue(params.for_retry(delay, errors), "retry")


def _next_tick(params: Parameters, now: datetime | None) -> Requeue | DeadLetter:
    try:
        return Requeue(params.for_next_tick(now), "next_tick")
    except Exception as exc:
        return dead_letter(
            params,
            DeadLetterReason.SCHEDULE_ERROR,
            exc,
            f"the next run of the schedule cannot be computed: {exc!r}",
        )
