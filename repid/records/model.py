"""The job record (`JobRecord`), its status and capped error history, and how one lifecycle
event changes it (`apply_event`, a pure function)."""

from __future__ import annotations

import enum
import json
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from repid.failures import ErrorEntry, capped
from repid.lifecycle import EventKind, JobEvent

__all__ = ["ErrorEntry", "JobRecord", "JobStatus", "apply_event"]


class JobStatus(enum.StrEnum):
    """Where a job is."""

    QUEUED = "queued"
    """Waiting in its queue, ready to run."""
    DELAYED = "delayed"
    """Waiting until `JobRecord.due` (a deferred job, a retry after a delay, a snooze)."""
    RUNNING = "running"
    """An actor is running it (`JobRecord.worker`, attempt `JobRecord.attempt`)."""
    SUCCEEDED = "succeeded"
    """The actor returned."""
    FAILED = "failed"
    """The last attempt failed and no retry is scheduled (yet)."""
    DEAD = "dead"
    """In the dead part of its queue."""
    CANCELLED = "cancelled"
    """Cancelled (`Job.cancel`) while it ran."""


_FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.DEAD, JobStatus.CANCELLED})


@dataclass(frozen=True, slots=True)
class JobRecord:
    """What is known of one job, as its producer and workers reported it.

    Attributes:
        id: the job (message) id.
        actor: the actor's name.
        queue: the queue's name.
        status: where the job is (`JobStatus`).
        attempt: the current (or last) attempt, 1-based.
        attempts: attempts started so far.
        worker: the id of the worker running it (or that ran it last), as in `live_workers()`.
        enqueued_at / started_at / finished_at: epoch seconds (None until it happened).
        due: when a delayed job becomes ready, epoch seconds.
        updated_at: epoch seconds of the last change.
        errors: the last failed attempts, oldest first (capped, see `RecordWriter`).
    """

    id: str
    actor: str
    queue: str
    status: JobStatus
    attempt: int = 1
    attempts: int = 0
    worker: str | None = None
    enqueued_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    due: float | None = None
    updated_at: float = field(default_factory=time.time)
    errors: tuple[ErrorEntry, ...] = ()

    @property
    def finished(self) -> bool:
        """Succeeded, dead or cancelled: nothing more will happen to it on its own."""
        return self.status in _FINISHED

    def to_json(self) -> str:
        """The record as JSON text (what a store keeps)."""
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, raw: str | bytes) -> JobRecord:
        """The record from `to_json()`'s text."""
        obj: dict[str, Any] = json.loads(raw)
        errors = tuple(ErrorEntry(**entry) for entry in obj.pop("errors", ()))
        obj["status"] = JobStatus(obj["status"])
        return cls(**obj, errors=errors)


def apply_event(
    record: JobRecord | None,
    event: JobEvent,
    *,
    error_history: int = 5,
    error_bytes: int = 16_384,
) -> JobRecord:
    """The record after `event` (`record`: the stored one, None if there is none yet).

    `error_history` failed attempts are kept (0: none), in at most `error_bytes` of text.
    """
    at = event.at
    if record is None:
        record = JobRecord(event.job_id, event.actor, event.queue, JobStatus.QUEUED, updated_at=at)
    changes: dict[str, Any] = {"updated_at": at, "attempt": event.attempt}
    # Events can arrive late: "enqueued" once the broker has the job (a worker may have started
    # it already) and "retried" once the requeue is settled (the next attempt may be running).
    if event.kind is EventKind.ENQUEUED and record.started_at is not None:
        return replace(record, enqueued_at=at, updated_at=at)
    if event.kind is EventKind.RETRIED and record.attempt > event.attempt:
        return replace(record, updated_at=at)
    match event.kind:
        case EventKind.ENQUEUED:
            delayed = event.due is not None and event.due > at
            changes |= {
                "status": JobStatus.DELAYED if delayed else JobStatus.QUEUED,
                "enqueued_at": at,
                "due": event.due if delayed else None,
            }
        case EventKind.STARTED:
            changes |= {
                "status": JobStatus.RUNNING,
                "worker": event.worker,
                "started_at": at,
                "finished_at": None,
                "due": None,
                "attempts": record.attempts + 1,
            }
        case EventKind.SUCCEEDED:
            changes |= {"status": JobStatus.SUCCEEDED, "finished_at": at}
        case EventKind.FAILED:
            entry = ErrorEntry(
                at, event.attempt, event.error_type, event.error, event.traceback, event.worker
            )
            changes |= {
                "status": JobStatus.FAILED,
                "finished_at": at,
                "errors": capped(record.errors, entry, error_history, error_bytes),
            }
        case EventKind.RETRIED | EventKind.SNOOZED:
            delayed = event.due is not None and event.due > at
            changes |= {
                "status": JobStatus.DELAYED if delayed else JobStatus.QUEUED,
                "due": event.due if delayed else None,
                # the next run is the next attempt (a snooze does not count one)
                "attempt": event.attempt + (1 if event.kind is EventKind.RETRIED else 0),
            }
        case EventKind.DEAD_LETTERED:
            changes |= {"status": JobStatus.DEAD, "finished_at": at}
            already = record.status is JobStatus.FAILED and record.attempt == event.attempt
            if event.error_type is not None and not already:  # refused input: never ran
                entry = ErrorEntry(
                    at, event.attempt, event.error_type, event.error, event.traceback, event.worker
                )
                changes["errors"] = capped(record.errors, entry, error_history, error_bytes)
        case EventKind.CANCELLED:
            changes |= {"status": JobStatus.CANCELLED, "finished_at": at}
    return replace(record, **changes)
