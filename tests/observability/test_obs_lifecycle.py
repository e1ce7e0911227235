"""`JobLifecycleMiddleware`: each run is matched to its settlement and classified."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from _obs_helpers import declare, in_memory_app, no_backoff, run_worker

from repid import (
    Job,
    JobCancelledError,
    MessageDependency,
    QueueNotDeclaredError,
    Router,
    Snooze,
    Worker,
)
from repid.brokers.base import Delivery
from repid.data import DeadLetterInfo, DelayProperties, Parameters, RoutingKey
from repid.observability import JobLifecycleMiddleware, JobRun, Outcome


class Recorder(JobLifecycleMiddleware):
    """Records every hook call, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, JobRun]] = []

    def job_started(self, run: JobRun) -> None:
        self.calls.append(("started", run))

    def job_ran(self, run: JobRun) -> None:
        self.calls.append(("ran", run))

    def job_finished(self, run: JobRun) -> None:
        self.calls.append(("finished", run))

    def finished(self, actor: str) -> list[JobRun]:
        return [run for hook, run in self.calls if hook == "finished" and run.actor == actor]

    def hooks(self, actor: str) -> list[str]:
        return [hook for hook, run in self.calls if run.actor == actor]


async def test_cancelled_and_snoozed_runs() -> None:
    started = asyncio.Event()
    naps: list[int] = []
    router = Router()

    @router.actor
    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    @router.actor
    async def nap() -> None:
        naps.append(1)
        if len(naps) == 1:
            raise Snooze(0)

    recorder = Recorder()
    async with in_memory_app(recorder):
        await declare(router)
        await Job("nap").enqueue()
        job = await Job("block").enqueue()
        worker = asyncio.create_task(run_worker(router, 3))
        await started.wait()
        await job.cancel()
        await worker

    (cancelled,) = recorder.finished("block")
    assert cancelled.outcome is Outcome.CANCELLED
    assert isinstance(cancelled.exception, JobCancelledError)
    assert cancelled.error_type is None  # not a failure
    assert not cancelled.failed
    assert recorder.hooks("block") == ["started", "ran", "finished"]
    snoozed, succeeded = recorder.finished("nap")
    assert snoozed.outcome is Outcome.SNOOZED
    assert isinstance(snoozed.exception, Snooze)
    assert succeeded.outcome is Outcome.SUCCEEDED
    assert succeeded.returned
    assert succeeded.exception is None
    assert snoozed.attempt == succeeded.attempt == 1


async def test_a_run_cut_short_by_shutdown_is_returned_once() -> None:
    started = asyncio.Event()
    router = Router()

    @router.actor
    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    recorder = Recorder()
    async with in_memory_app(recorder):
        await declare(router)
        await Job("block").enqueue()
        worker = Worker(routers=[router], graceful_shutdown_time=0, handle_signals=[])
        running = asyncio.create_task(worker.run())
        await started.wait()
        worker.stop()
        runner = await running

    assert runner.rejected == 1
    (returned,) = recorder.finished("block")
    assert returned.outcome is Outcome.RETURNED
    assert isinstance(returned.exception, asyncio.CancelledError)
    assert recorder.hooks("block") == ["started", "ran", "finished"]  # the reject adds nothing
    assert recorder._runs == {}


async def test_recurring_jobs_succeed_or_fail_at_their_next_tick() -> None:
    router = Router()

    @router.actor
    async def tick() -> None:
        pass

    @router.actor(retry_policy=no_backoff)
    async def broken_tick() -> None:
        raise ValueError("broken")

    recorder = Recorder()
    async with in_memory_app(recorder) as app:
        await declare(router)
        # Recurring every hour, first run due now (a `Job` would wait for its first tick).
        every_hour = Parameters(delay=DelayProperties(defer_by=timedelta(hours=1)))
        for actor in ("tick", "broken_tick"):
            key = RoutingKey(f"{actor}-1", actor, "default")
            await app.connection.message_broker.enqueue(key, "", every_hour)
        await run_worker(router, 2)

    (succeeded,) = recorder.finished("tick")
    assert succeeded.outcome is Outcome.SUCCEEDED
    (failed,) = recorder.finished("broken_tick")
    assert failed.outcome is Outcome.FAILED
    assert failed.failed
    assert (failed.error_type, failed.error_message) == ("ValueError", "broken")
    assert isinstance(failed.exception, ValueError)


async def test_an_actor_settling_its_own_message() -> None:
    router = Router()

    @router.actor
    async def self_ack(message: MessageDependency) -> None:
        await message.ack()

    @router.actor
    async def self_reschedule(message: MessageDependency) -> None:
        await message.reschedule()

    recorder = Recorder()
    async with in_memory_app(recorder) as app:
        await declare(router)
        await Job("self_ack").enqueue()
        every_hour = Parameters(delay=DelayProperties(defer_by=timedelta(hours=1)))
        key = RoutingKey("resched-1", "self_reschedule", "default")
        await app.connection.message_broker.enqueue(key, "", every_hour)
        await run_worker(router, 2)

    (acked,) = recorder.finished("self_ack")
    assert acked.outcome is Outcome.SUCCEEDED
    # Finished at the settlement, while the actor still ran; it stopped afterwards.
    assert recorder.hooks("self_ack") == ["started", "finished", "ran"]
    (rescheduled,) = recorder.finished("self_reschedule")
    assert rescheduled.outcome is Outcome.RESCHEDULED
    assert recorder._runs == {}


def _delivery(handle: int, job_id: str = "job-1", attempt: int = 1) -> Delivery:
    params = Parameters()
    if attempt > 1:
        params = params._replace(retries=params.retries._replace(actual_amount=attempt - 1))
    return Delivery(RoutingKey(job_id, "add", "default"), "", params, handle)


def test_deliveries_of_one_job_are_told_apart_by_their_handle() -> None:
    recorder = Recorder()
    stale, fresh = _delivery(1), _delivery(2)  # a redelivery after the first lease expired
    for delivery in (stale, fresh):
        recorder.before_actor_run(delivery=delivery, parameters=delivery.parameters)
        recorder.after_actor_run(delivery=delivery, exception=None)
    recorder.before_ack(fresh._replace())  # an equal copy of the delivery matches too
    info = DeadLetterInfo(reason="manual", attempts=1)
    recorder.before_nack(stale, stale.parameters.for_dead_letter(info))
    first, second = (run for hook, run in recorder.calls if hook == "finished")
    assert (first.delivery, first.outcome) == (fresh, Outcome.SUCCEEDED)
    assert (second.delivery, second.outcome) == (stale, Outcome.DEAD_LETTERED)
    assert second.dead_letter_reason == "manual"
    assert recorder._runs == {}


def test_settlements_of_messages_no_actor_ran() -> None:
    recorder = Recorder()
    unknown = _delivery(7, job_id="elsewhere")
    recorder.before_ack(unknown)  # deleting a dead message, say
    recorder.before_reject(unknown)
    recorder.before_requeue(unknown, unknown.parameters)  # `repid dead retry`
    assert recorder.calls == []
    # A dependency failed before the actor started: the retry is reported, without a run.
    recorder.before_requeue(unknown, unknown.parameters.for_retry(timedelta(0)))
    ((hook, run),) = recorder.calls
    assert (hook, run.outcome, run.started) == ("finished", Outcome.RETRIED, None)
    assert not run.failed  # `failed` counts runs of an actor


async def test_a_failed_enqueue_is_not_counted_as_enqueued() -> None:
    enqueued: list[str] = []
    failed: list[tuple[str, BaseException]] = []

    class Producer(JobLifecycleMiddleware):
        def job_enqueued(self, key: RoutingKey, params: Parameters | None) -> None:
            enqueued.append(key.queue)

        def job_enqueue_failed(
            self, key: RoutingKey, params: Parameters | None, exception: BaseException
        ) -> None:
            failed.append((key.queue, exception))

    async with in_memory_app(Producer()) as app:
        await app.connection.message_broker.queue_declare("default")
        await Job("add").enqueue()
        with pytest.raises(QueueNotDeclaredError) as raised:
            await Job("add", queue="undeclared").enqueue()
    assert enqueued == ["default"]
    assert failed == [("undeclared", raised.value)]
