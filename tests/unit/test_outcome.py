"""The outcome policy (`repid.worker.outcome.decide`) as a pure function: every way a run can end,
mapped to what the broker is told, without a broker."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from repid import Router
from repid.brokers.base import Delivery
from repid.data import (
    DeadLetterReason,
    DelayProperties,
    Parameters,
    RetriesProperties,
    RoutingKey,
)
from repid.message import MessageDecision
from repid.router import ActorData
from repid.worker.outcome import (
    Ack,
    Broken,
    Cancelled,
    DeadLetter,
    Failed,
    Leave,
    Refused,
    Reject,
    Requeue,
    ShutDown,
    Snoozed,
    Succeeded,
    Unrecorded,
    decide,
)

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SETTLED = MessageDecision(settled=True, outcome="ack")
NO_RETRIES = RetriesProperties()
NO_DELAY = DelayProperties()


def actor(retry_policy: Any = None) -> ActorData:
    router = Router()

    @router.actor(name="work", retry_policy=retry_policy or (lambda n: timedelta(seconds=n)))
    async def work() -> None:
        pass

    return router.actors["work"]


def delivery(
    retries: RetriesProperties = NO_RETRIES,
    delay: DelayProperties = NO_DELAY,
) -> Delivery:
    return Delivery(
        RoutingKey("job-1", "work"), "{}", Parameters(retries=retries, delay=delay), object()
    )


def test_success_acks() -> None:
    assert decide(delivery(), actor(), Succeeded()) == Ack()
    assert decide(delivery(), actor(), Succeeded(MessageDecision())) == Ack()


def test_the_actors_own_settlement_wins() -> None:
    assert decide(delivery(), actor(), Succeeded(SETTLED)) == Leave()
    failed = Failed(RuntimeError("x"), decision=SETTLED)
    assert decide(delivery(RetriesProperties(3, 0)), actor(), failed) == Leave()


def test_a_recurring_success_is_requeued_for_its_next_tick() -> None:
    every_minute = DelayProperties(defer_by=timedelta(minutes=1), next_execution_time=NOW)
    settlement = decide(delivery(delay=every_minute), actor(), Succeeded(), now=NOW)
    assert isinstance(settlement, Requeue)
    assert settlement.why == "next_tick"
    assert settlement.parameters.delay.next_execution_time == NOW + timedelta(minutes=1)


def test_a_failure_with_retries_left_is_retried_after_the_policy_delay() -> None:
    before = datetime.now(tz=UTC)
    settlement = decide(delivery(RetriesProperties(3, 1)), actor(), Failed(RuntimeError("x")))
    assert isinstance(settlement, Requeue)
    assert settlement.why == "retry"
    assert settlement.policy_error is None
    assert settlement.parameters.retries == RetriesProperties(3, 2)
    due = settlement.parameters.delay.next_execution_time
    assert due is not None
    assert due >= before + timedelta(seconds=2)  # the policy's delay for retry number 2


def test_a_retry_policy_that_raises_retries_at_once_and_says_so() -> None:
    def broken(_n: int) -> timedelta:
        raise ValueError("bad policy")

    settlement = decide(delivery(RetriesProperties(1, 0)), actor(broken), Failed(KeyError("k")))
    assert isinstance(settlement, Requeue)
    assert isinstance(settlement.policy_error, ValueError)
    assert settlement.parameters.retries == RetriesProperties(1, 1)


@pytest.mark.parametrize("reason", [DeadLetterReason.EXCEPTION, DeadLetterReason.TIMEOUT])
def test_a_failure_without_retries_is_dead_lettered_with_the_error(
    reason: DeadLetterReason,
) -> None:
    error = RuntimeError("boom")
    settlement = decide(delivery(RetriesProperties(2, 2)), actor(), Failed(error, reason))
    assert isinstance(settlement, DeadLetter)
    assert settlement.error is error
    assert settlement.info.reason == reason.value
    assert settlement.info.error_type == "RuntimeError"
    assert settlement.info.error_message == "boom"
    assert settlement.info.attempts == 3
    assert settlement.parameters.dead_letter == settlement.info


def test_a_failing_recurring_job_runs_again_at_its_next_tick() -> None:
    every_minute = DelayProperties(defer_by=timedelta(minutes=1), next_execution_time=NOW)
    settlement = decide(delivery(delay=every_minute), actor(), Failed(RuntimeError()), now=NOW)
    assert isinstance(settlement, Requeue)
    assert settlement.why == "next_tick"


@pytest.mark.parametrize(
    "schedule",
    [
        DelayProperties(cron="not a cron string"),
        DelayProperties(defer_by=timedelta(0)),
        DelayProperties(defer_by=timedelta(seconds=-5)),
    ],
    ids=["bad-cron", "zero-interval", "negative-interval"],
)
@pytest.mark.parametrize(
    "outcome", [Succeeded(), Failed(RuntimeError("x"))], ids=["succeeded", "failed"]
)
def test_a_schedule_without_a_next_tick_is_dead_lettered(
    schedule: DelayProperties, outcome: Succeeded | Failed
) -> None:
    settlement = decide(delivery(delay=schedule), actor(), outcome, now=NOW)
    assert isinstance(settlement, DeadLetter)
    assert settlement.info.reason == DeadLetterReason.SCHEDULE_ERROR.value
    assert settlement.info.error_message


def test_a_cron_schedule_without_croniter_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "croniter", None)  # `import croniter` raises ImportError
    hourly = DelayProperties(cron="0 * * * *")
    settlement = decide(delivery(delay=hourly), actor(), Succeeded(), now=NOW)
    assert isinstance(settlement, DeadLetter)
    assert settlement.info.reason == DeadLetterReason.SCHEDULE_ERROR.value
    assert settlement.info.error_type in {"ImportError", "ModuleNotFoundError"}


def test_snooze_requeues_after_its_delay_without_counting_an_attempt() -> None:
    before = datetime.now(tz=UTC)
    settlement = decide(delivery(RetriesProperties(1, 0)), actor(), Snoozed(timedelta(minutes=5)))
    assert isinstance(settlement, Requeue)
    assert settlement.why == "snooze"
    assert settlement.parameters.retries == RetriesProperties(1, 0)
    due = settlement.parameters.delay.next_execution_time
    assert due is not None
    assert due >= before + timedelta(minutes=5)


def test_cancellation_acks_and_shutdown_or_an_unrecorded_result_rejects() -> None:
    assert decide(delivery(), actor(), Cancelled()) == Ack()
    assert decide(delivery(), actor(), ShutDown()) == Reject()
    assert decide(delivery(), actor(), Unrecorded()) == Reject()


@pytest.mark.parametrize(
    "reason",
    [
        DeadLetterReason.DECODE_ERROR,
        DeadLetterReason.UNKNOWN_ACTOR,
        DeadLetterReason.VALIDATION_ERROR,
        DeadLetterReason.EXPIRED,
    ],
)
def test_refused_input_is_dead_lettered_with_its_reason_even_with_retries_left(
    reason: DeadLetterReason,
) -> None:
    settlement = decide(delivery(RetriesProperties(5, 0)), None, Refused(reason, "why"))
    assert isinstance(settlement, DeadLetter)
    assert settlement.info.reason == reason.value
    assert settlement.info.error_message == "why"
    assert settlement.info.traceback is None


def test_repids_own_error_is_dead_lettered_as_internal_error() -> None:
    error = AttributeError("a bug")
    settlement = decide(delivery(RetriesProperties(5, 0)), actor(), Broken(error))
    assert isinstance(settlement, DeadLetter)
    assert settlement.info.reason == DeadLetterReason.INTERNAL_ERROR.value
    assert settlement.info.error_type == "AttributeError"
    assert settlement.info.traceback is not None


async def test_message_dependency_exposes_what_the_actor_decided() -> None:
    from repid.message import MessageDependency

    class Broker:
        acked: list[Delivery] = []

        async def ack(self, d: Delivery) -> None:
            self.acked.append(d)

    message = MessageDependency(delivery(), Broker())  # type: ignore[arg-type]
    assert message.decision == MessageDecision()
    error = ValueError("recorded")
    message.set_result(42)
    message.set_exception(error)
    message.add_callback(print)
    await message.ack()
    decision = message.decision
    assert decision == MessageDecision(True, "ack", True, 42, error, (print,))
    with pytest.raises(AttributeError):
        decision.settled = False  # type: ignore[misc]
