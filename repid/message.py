"""`Message`: one delivered message, settled by the code holding it.

Messages come from `Queue.get_messages()` (browsing or manual consumption) or are injected into an
actor through a `MessageDependency` parameter. Once settled (ack, nack, reject, retry, ...), a
message is read-only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from repid.data import (
    DeadLetterInfo,
    DeadLetterReason,
    MessageCategory,
    Parameters,
    RoutingKey,
)
from repid.errors import RepidError
from repid.retry_policy import RetryPolicyT, default_retry_policy_factory, retry_delay

if TYPE_CHECKING:
    from repid.brokers.base import Delivery, MessageBrokerT

__all__ = [
    "ActorEnded",
    "Message",
    "MessageDecision",
    "MessageDependency",
    "MessageReadOnlyError",
]

_DEFAULT_POLICY = default_retry_policy_factory()


class MessageReadOnlyError(RepidError, ValueError, RuntimeError):
    """The message was already settled ("Message is read only.", a `ValueError` as in 1.6)."""


class ActorEnded(BaseException):
    """Ends an actor early once it settled its `MessageDependency` (repid 1.6 behaviour).

    Raised inside the actor by `ack()`, `nack()`, `reject()`, `retry()`, `force_retry()` and
    `reschedule()` after the message is settled; the worker catches it. It derives from
    `BaseException` so that an actor's `except Exception` does not stop it.
    """


class Message:
    """A delivered message and the operations that settle it."""

    __slots__ = ("_broker", "_delivery", "_on_settled", "_retry_policy", "outcome", "read_only")

    def __init__(
        self,
        delivery: Delivery,
        broker: MessageBrokerT,
        retry_policy: RetryPolicyT | None = None,
    ) -> None:
        self._delivery = delivery
        self._broker = broker
        self._retry_policy = retry_policy or _DEFAULT_POLICY
        self.read_only = False
        self._on_settled: Callable[[], None] | None = None
        self.outcome: str | None = None
        """What settled the message: "ack", "nack", "reject", "retry" or "reschedule"."""

    @property
    def key(self) -> RoutingKey:
        return self._delivery.key

    @property
    def raw_payload(self) -> str:
        return self._delivery.payload

    @property
    def parameters(self) -> Parameters:
        return self._delivery.parameters

    @property
    def category(self) -> MessageCategory:
        return self._delivery.category

    @property
    def delivery(self) -> Delivery:
        return self._delivery

    @property
    def dead_letter(self) -> DeadLetterInfo | None:
        """Why the message is dead (DEAD category only)."""
        return self._delivery.parameters.dead_letter

    def _settle(self, outcome: str) -> None:
        if self.read_only:
            raise MessageReadOnlyError(
                f"Message is read only. (message {self.key.id_} was already settled: "
                f"{self.outcome})"
            )
        self.read_only = True
        self.outcome = outcome

    def _done(self) -> None:
        if self._on_settled is not None:
            self._on_settled()

    def _after_settle(self) -> None:
        """Called once a settlement succeeded (`MessageDependency` ends the actor here)."""

    def _only_normal(self, action: str, *, revive: bool = False) -> None:
        category = self._delivery.category
        if category is MessageCategory.NORMAL or (revive and category is MessageCategory.DEAD):
            return
        hint = " (pass revive=True to send a dead message back to work)" if not revive else ""
        raise ValueError(f"Can not {action} message with category {category}.{hint}")

    async def ack(self) -> None:
        """Done: remove the message (a dead or delayed message is deleted)."""
        self._settle("ack")
        try:
            await self._broker.ack(self._delivery)
        finally:
            self._done()
        self._after_settle()

    async def nack(self, reason: str = DeadLetterReason.MANUAL.value) -> None:
        """Move the message to the dead part of its queue.

        Raises:
            ValueError: the message is not a NORMAL one ("Can not nack message with category
                ..."), or it is already settled ("Message is read only.").
        """
        self._only_normal("nack")
        self._settle("nack")
        params = self._delivery.parameters
        info = DeadLetterInfo(reason=reason, attempts=params.attempt, errors=params.errors)
        try:
            await self._broker.nack(self._delivery, params.for_dead_letter(info))
        finally:
            self._done()
        self._after_settle()

    async def reject(self) -> None:
        """Return the message to its queue without counting an attempt."""
        self._settle("reject")
        try:
            await self._broker.reject(self._delivery)
        finally:
            self._done()
        self._after_settle()

    async def reschedule(self) -> None:
        """Run again at the next tick of its schedule (recurring jobs), else return to the queue."""
        self._settle("reschedule")
        params = self._delivery.parameters
        try:
            if params.delay.is_recurring:
                await self._broker.requeue(self._delivery, None, params.for_next_tick())
            elif self._delivery.category is MessageCategory.DEAD:
                await self._broker.requeue(self._delivery, None, params.for_requeue_from_dead())
            else:
                await self._broker.reject(self._delivery)
        finally:
            self._done()
        self._after_settle()

    async def retry(
        self,
        next_retry: timedelta | None = None,
        *,
        revive: bool = False,
        policy_delay: bool = False,
    ) -> None:
        """Retry after `next_retry` (default: at once, as in repid 1.6), counting an attempt.

        Args:
            next_retry: the delay before the next attempt.
            policy_delay: without `next_retry`, wait the actor's retry policy's delay for this
                attempt instead of retrying at once.
            revive: allow a message of the DEAD part: it goes back to the queue with fresh
                retries (after `next_retry` if given). Without it, as in repid 1.6, only
                NORMAL messages can be retried.

        Raises:
            ValueError: the job has no retries left; the message is not NORMAL ("Can not
                retry message with category ...") and `revive` does not allow it; or it is
                already settled ("Message is read only.").
        """
        self._only_normal("retry", revive=revive)
        params = self._delivery.parameters
        if self._delivery.category is not MessageCategory.DEAD and params.retries.left <= 0:
            if self.read_only:
                self._settle("retry")  # raises "Message is read only."
            raise ValueError(f"message {self.key.id_} has no retries left")
        await self._force_retry(next_retry, policy_delay)

    async def force_retry(
        self,
        next_retry: timedelta | None = None,
        *,
        revive: bool = False,
        policy_delay: bool = False,
    ) -> None:
        """Retry even when the retries are exhausted (`revive`, `policy_delay` as in `retry`)."""
        self._only_normal("force retry", revive=revive)
        await self._force_retry(next_retry, policy_delay)

    async def _force_retry(self, next_retry: timedelta | None, policy_delay: bool) -> None:
        self._settle("retry")
        params = self._delivery.parameters
        if self._delivery.category is MessageCategory.DEAD:
            new = params.for_requeue_from_dead()
            if next_retry:
                new = new.for_delay(next_retry)
        else:
            delay = next_retry
            if delay is None:
                delay = (
                    retry_delay(self._retry_policy, params.retries.actual_amount + 1)
                    if policy_delay
                    else timedelta(0)
                )
            new = params.for_retry(delay)
        try:
            await self._broker.requeue(self._delivery, None, new)
        finally:
            self._done()
        self._after_settle()

    def __repr__(self) -> str:
        return (
            f"Message(key={self.key!r}, category={self.category.value}, read_only={self.read_only})"
        )


@dataclass(frozen=True, slots=True)
class MessageDecision:
    """What an actor decided through its `MessageDependency` (read by the worker).

    Attributes:
        settled: the actor settled the message itself; the worker does not settle it again.
        outcome: how it was settled ("ack", "nack", "reject", "retry", "reschedule"), or None.
        result_set: `set_result` was called; `result` replaces the actor's return value.
        result: the value given to `set_result`.
        exception: the exception given to `set_exception` (the job is recorded as failed).
        callbacks: the functions given to `add_callback`, in order.
    """

    settled: bool = False
    outcome: str | None = None
    result_set: bool = False
    result: Any = None
    exception: BaseException | None = None
    callbacks: tuple[Callable[[], Any], ...] = ()


class MessageDependency(Message):
    """Annotate an actor parameter with this type to receive the message being processed.

    Settling it from the actor (`ack`, `nack`, `reject`, `retry`, `reschedule`) decides the outcome
    and the worker will not settle it again. As in repid 1.6, settling also ends the actor there
    (`ActorEnded` is raised from the call); with `Worker(settle_ends_actor=False)` the actor goes
    on running after it and the decision still stands. `set_result`/`set_exception` change what
    is stored as the job's result; `add_callback` registers a function called after the message
    is settled.
    """

    __slots__ = (
        "_actor_task",
        "_callbacks",
        "_exception",
        "_result",
        "_result_set",
        "worker_state",
    )

    def __init__(
        self,
        delivery: Delivery,
        broker: MessageBrokerT,
        retry_policy: RetryPolicyT | None = None,
        worker_state: Any = None,
    ) -> None:
        super().__init__(delivery, broker, retry_policy)
        self.worker_state = worker_state
        """What the worker's `lifespan` yielded (None without one): the way for `Depends`
        functions to reach the worker's long-lived resources."""
        self._result: Any = None
        self._result_set = False
        self._exception: BaseException | None = None
        self._callbacks: list[Callable[[], Any]] = []
        self._actor_task: asyncio.Task[Any] | None = None

    def end_actor_on_settle(self) -> None:
        """Let a settlement made from the current task end it (`ActorEnded`; set by the worker)."""
        self._actor_task = asyncio.current_task()

    def _after_settle(self) -> None:
        task = self._actor_task
        if task is not None and asyncio.current_task() is task:
            self._actor_task = None
            raise ActorEnded

    def set_result(self, value: Any) -> None:
        """Store `value` as the job's result instead of the actor's return value."""
        self._result = value
        self._result_set = True

    def set_exception(self, exc: BaseException) -> None:
        """Record the job as failed with `exc` (the actor's return value is ignored)."""
        self._exception = exc

    def add_callback(self, fn: Callable[[], Any]) -> None:
        """Call `fn()` (sync or async) once the message has been settled."""
        self._callbacks.append(fn)

    @property
    def decision(self) -> MessageDecision:
        """A snapshot of what the actor decided so far (settlement, result, exception)."""
        return MessageDecision(
            self.read_only,
            self.outcome,
            self._result_set,
            self._result,
            self._exception,
            tuple(self._callbacks),
        )
