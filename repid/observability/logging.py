"""Structured logs of the job lifecycle through the standard `logging` module.

Quiet by default: records go to the `repid.jobs` logger, which (like every `repid.*` logger)
has no handler of its own. Each record carries the job's fields as attributes (`extra`).
"""

from __future__ import annotations

import logging

from repid.data import Parameters, RoutingKey
from repid.observability._lifecycle import JobLifecycleMiddleware, JobRun, Outcome

__all__ = ["JOB_FIELDS", "JobLogMiddleware"]

JOB_FIELDS = (
    "event",
    "job_id",
    "actor",
    "queue",
    "attempt",
    "duration_ms",
    "outcome",
    "error_type",
    "error_message",
)
"""The attributes every record of `JobLogMiddleware` has (None when they do not apply)."""

_LEVELS = {
    Outcome.SUCCEEDED: logging.INFO,
    Outcome.RESCHEDULED: logging.INFO,
    Outcome.RETURNED: logging.INFO,
    Outcome.CANCELLED: logging.INFO,
    Outcome.SNOOZED: logging.INFO,
    Outcome.RETRIED: logging.WARNING,
    Outcome.FAILED: logging.ERROR,
    Outcome.DEAD_LETTERED: logging.ERROR,
}


class JobLogMiddleware(JobLifecycleMiddleware):
    """Logs every enqueue, actor start and outcome as one record each.

    Levels: enqueued and started at DEBUG; succeeded, rescheduled, returned, cancelled and
    snoozed at INFO; retried at WARNING; dead-lettered and failed (recurring) at ERROR. The
    message text is short and human-readable; the fields of `JOB_FIELDS` are attributes of the
    record, for a JSON formatter or a log shipper.

    Args:
        logger: where to log; `logging.getLogger("repid.jobs")` by default.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        super().__init__()
        self.logger = logger if logger is not None else logging.getLogger("repid.jobs")

    def job_enqueued(self, key: RoutingKey, params: Parameters | None) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            attempt = params.attempt if params is not None else 1
            self.logger.debug(
                "enqueued %s %s on %s",
                key.topic,
                key.id_,
                key.queue,
                extra=_fields("enqueued", key, attempt),
            )

    def job_started(self, run: JobRun) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(
                "started %s %s (attempt %d)",
                run.actor,
                run.job_id,
                run.attempt,
                extra=_fields("started", run.key, run.attempt),
            )

    def job_finished(self, run: JobRun) -> None:
        assert run.outcome is not None
        level = _LEVELS[run.outcome]
        if not self.logger.isEnabledFor(level):
            return
        duration_ms = None if run.duration is None else round(run.duration * 1000, 3)
        extra = _fields(run.outcome.value, run.key, run.attempt)
        extra.update(
            duration_ms=duration_ms,
            outcome=run.outcome.value,
            error_type=run.error_type,
            error_message=run.error_message,
        )
        error = f": {run.error_type}: {run.error_message}" if run.error_type else ""
        took = f" in {duration_ms} ms" if duration_ms is not None else ""
        self.logger.log(
            level,
            "%s %s %s (attempt %d)%s%s",
            run.outcome.value,
            run.actor,
            run.job_id,
            run.attempt,
            took,
            error,
            extra=extra,
        )


def _fields(event: str, key: RoutingKey, attempt: int) -> dict[str, object]:
    return {
        "event": event,
        "job_id": key.id_,
        "actor": key.topic,
        "queue": key.queue,
        "attempt": attempt,
        "duration_ms": None,
        "outcome": None,
        "error_type": None,
        "error_message": None,
    }
