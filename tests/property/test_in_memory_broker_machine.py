"""A state machine driving `InMemoryMessageBroker` through the broker protocol against a model.

Hypothesis enqueues (priorities, delays, unique ids), fetches, settles (ack, nack, reject,
requeue with a delay), renews, crashes consumers (their deliveries are never settled) and moves a
fake clock. After every step the broker must agree with the model:

- every message is in exactly one place (ready/delayed, in flight, dead, acked), never lost;
- a fetch hands out ready messages in priority order and never a delayed one before its time;
- an expired lease makes its message available again, and the old delivery's settlements are
  stale (False) and leave the redelivered copy alone;
- at the end, once everything is drained, each message was acked exactly once or is dead.

Leases are reclaimed lazily (when the broker next looks), so the model learns which leases were
reclaimed from the broker's in-flight count and checks they are exactly the earliest-expired ones.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from repid import Delivery, InMemoryMessageBroker, MessageCategory, Parameters, RoutingKey
from repid.data import DeadLetterInfo, DelayProperties, RetriesProperties

from . import PROPERTY_SETTINGS

QUEUE = "machine"
LEASE = 2.0
START = 1_700_000_000.0
CONSUMERS = 2
T = TypeVar("T")

priorities = st.sampled_from([0, 1, 2])
delays = st.one_of(st.none(), st.sampled_from([0.0, 0.5, 1.0, LEASE, 5.0]))
ticks = st.one_of(
    st.sampled_from([0.25, 0.5, LEASE / 2, LEASE, LEASE + 0.25, 3 * LEASE]),
    st.floats(min_value=0.01, max_value=3 * LEASE),
)
unique_ids = st.one_of(st.none(), st.sampled_from(["u1", "u2", "u3"]))


class FakeClock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock is the fake clock, so the broker's delay timers follow it.

    Timers then fire only when a step moves the clock (`advance_clock` lets them run), never in
    the middle of another step; every change the broker makes is caused by the step's own call.
    """

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self._fake_clock = clock

    def time(self) -> float:
        return self._fake_clock.now


def _at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


@dataclass
class Model:
    """What the model knows of one published message (the payload carries its serial)."""

    serial: int
    id_: str
    priority: int
    due: float | None
    state: str = "pending"  # pending (ready or delayed) | inflight | dead | acked
    handle: Any = None
    deadline: float = 0.0
    acks: int = 0
    attempts_used: int = 0


@dataclass
class Held:
    delivery: Delivery
    consumer: int


class BrokerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.loop = FakeTimeLoop(self.clock)
        self.broker = InMemoryMessageBroker(clock=self.clock, lease_duration=LEASE)
        self.run(self.broker.connect())
        self.run(self.broker.queue_declare(QUEUE))
        self.consumers = [self._new_consumer() for _ in range(CONSUMERS)]
        self.messages: dict[int, Model] = {}
        self.held: list[Held] = []
        self.serials = itertools.count()

    # -- plumbing ---------------------------------------------------------------------------

    def run(self, awaitable: Awaitable[T]) -> T:
        async def wrapper() -> T:
            return await awaitable

        return self.loop.run_until_complete(wrapper())

    def _new_consumer(self) -> Any:
        consumer = self.broker.get_consumer(QUEUE)
        self.run(consumer.start())
        return consumer

    def counts(self) -> dict[str, int]:
        return self.broker.counts(QUEUE)

    def in_state(self, state: str) -> list[Model]:
        return [m for m in self.messages.values() if m.state == state]

    def model_of(self, delivery: Delivery) -> Model:
        return self.messages[int(delivery.payload)]

    def is_live(self, delivery: Delivery) -> bool:
        model = self.model_of(delivery)
        return model.state == "inflight" and model.handle == delivery.handle

    def eligible(self) -> list[Model]:
        now = self.clock.now
        return [m for m in self.in_state("pending") if m.due is None or m.due <= now]

    def browse(self, category: MessageCategory) -> list[Delivery]:
        consumer = self.broker.get_consumer(QUEUE, category=category)
        batch: list[Delivery] = self.run(consumer.fetch(10**6))
        return batch

    def observe_reclaims(self, taken: int = 0) -> None:
        """Learn which leases the broker reclaimed (all those expired at some moment <= now)."""
        inflight = sorted(self.in_state("inflight"), key=lambda m: m.deadline)
        reclaimed = len(inflight) + taken - self.counts()["in_flight"]
        assert 0 <= reclaimed <= len(inflight), f"{reclaimed} leases reclaimed of {len(inflight)}"
        if not reclaimed:
            return
        last = inflight[reclaimed - 1].deadline
        assert last <= self.clock.now, "a lease was reclaimed before it expired"
        if reclaimed < len(inflight):
            assert inflight[reclaimed].deadline > last, "leases expired together, reclaimed apart"
        for model in inflight[:reclaimed]:
            model.state, model.handle = "pending", None

    # -- rules ----------------------------------------------------------------------------------

    def _publish(self, id_: str | None, priority: int, delay: float | None) -> tuple[Any, ...]:
        serial = next(self.serials)
        params = Parameters()
        due = None
        if delay is not None:
            params = Parameters(delay=DelayProperties(delay_until=_at(self.clock.now + delay)))
            due = params.not_before
        key = RoutingKey(id_ or f"m{serial}", "actor", QUEUE, priority)
        duplicate = any(
            m.id_ == key.id_ and m.state in ("pending", "inflight") for m in self.messages.values()
        )
        if not duplicate:
            self.messages[serial] = Model(serial, key.id_, priority, due)
        return key, str(serial), params

    @rule(id_=unique_ids, priority=priorities, delay=delays)
    def enqueue(self, id_: str | None, priority: int, delay: float | None) -> None:
        before = sum(self.counts().values())
        known = len(self.messages)
        key, payload, params = self._publish(id_, priority, delay)
        self.run(self.broker.enqueue(key, payload, params))
        added = len(self.messages) - known
        assert sum(self.counts().values()) == before + added, "unique id not respected"

    @rule(batch=st.lists(st.tuples(unique_ids, priorities, delays), min_size=1, max_size=4))
    def enqueue_many(self, batch: list[tuple[str | None, int, float | None]]) -> None:
        before = sum(self.counts().values())
        known = len(self.messages)
        messages = [self._publish(*spec) for spec in batch]
        self.run(self.broker.enqueue_many(messages))
        assert sum(self.counts().values()) == before + len(self.messages) - known

    @rule(consumer=st.integers(0, CONSUMERS - 1), count=st.integers(1, 6))
    def fetch(self, consumer: int, count: int) -> None:
        self._fetch(self.consumers[consumer], consumer, count)

    def _fetch(self, consumer: Any, index: int, count: int) -> list[Delivery]:
        batch: list[Delivery] = self.run(consumer.fetch(count, 0.0))
        self.observe_reclaims(taken=len(batch))
        eligible = {m.serial: m for m in self.eligible()}
        taken = [self.model_of(d) for d in batch]
        for delivery, model in zip(batch, taken, strict=True):
            assert model.serial in eligible, (
                f"handed out message {model.serial} in state {model.state} "
                f"(due {model.due}, now {self.clock.now})"
            )
            assert delivery.key.priority == model.priority
        priorities_taken = [m.priority for m in taken]
        assert priorities_taken == sorted(priorities_taken), "fetch not in priority order"
        left = [m for s, m in eligible.items() if s not in {t.serial for t in taken}]
        if len(batch) < count:
            assert not left, f"fetch returned {len(batch)} < {count} with {len(left)} ready"
        elif taken and left:
            assert max(priorities_taken) <= min(m.priority for m in left), (
                "a lower priority was handed out while a higher one was ready"
            )
        for delivery, model in zip(batch, taken, strict=True):
            assert len({d.serial for d in taken}) == len(taken)
            model.state, model.handle = "inflight", delivery.handle
            model.deadline = self.clock.now + LEASE
            self.held.append(Held(delivery, index))
        return batch

    def _pick(self, data: st.DataObject) -> int:
        return data.draw(st.integers(0, len(self.held) - 1), label="held delivery")

    def _settle_one(self, index: int, operation: str, *args: Any) -> None:
        """Settle a held delivery (live or stale) and update the model with the outcome."""
        delivery = self.held.pop(index).delivery
        model = self.model_of(delivery)
        live = self.is_live(delivery)
        before = self.counts()
        result = self.run(getattr(self.broker, operation)(delivery, *args))
        if not live:
            assert result is False, f"stale {operation} returned {result!r}"
            assert self.counts() == before, f"a stale {operation} changed the queue"
        else:
            assert result is True, f"{operation} of a live delivery returned {result!r}"
            model.handle = None
            if operation == "ack":
                model.state = "acked"
                model.acks += 1
            elif operation == "nack":
                model.state = "dead"
            elif operation == "reject":
                model.state = "pending"
            else:
                params: Parameters = args[1]
                model.state, model.due = "pending", params.not_before
                model.attempts_used += 1
        self.observe_reclaims()

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def ack(self, data: st.DataObject) -> None:
        self._settle_one(self._pick(data), "ack")

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def nack(self, data: st.DataObject) -> None:
        index = self._pick(data)
        parameters = self.held[index].delivery.parameters
        info = DeadLetterInfo(reason="manual", attempts=parameters.attempt)
        self._settle_one(index, "nack", parameters.for_dead_letter(info))

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def reject(self, data: st.DataObject) -> None:
        self._settle_one(self._pick(data), "reject")

    @precondition(lambda self: self.held)
    @rule(data=st.data(), delay=st.sampled_from([0.0, 0.5, 1.0, 3.0]))
    def requeue(self, data: st.DataObject, delay: float) -> None:
        """A retry: one more attempt counted, not before now + `delay`."""
        index = self._pick(data)
        old = self.held[index].delivery.parameters
        params = old._replace(
            retries=RetriesProperties(old.retries.max_amount, old.retries.actual_amount + 1),
            delay=old.delay._replace(next_execution_time=_at(self.clock.now + delay)),
        )
        self._settle_one(index, "requeue", None, params)

    @precondition(lambda self: self.held)
    @rule(data=st.data())
    def renew(self, data: st.DataObject) -> None:
        chosen = data.draw(st.sets(st.integers(0, len(self.held) - 1), min_size=1), label="renew")
        deliveries = [self.held[i].delivery for i in sorted(chosen)]
        live = [d for d in deliveries if self.is_live(d)]
        self.run(self.broker.renew(deliveries))
        for delivery in live:
            self.model_of(delivery).deadline = self.clock.now + LEASE
        self.observe_reclaims()

    @rule(consumer=st.integers(0, CONSUMERS - 1))
    def crash_consumer(self, consumer: int) -> None:
        """The consumer vanishes: its deliveries are never settled, renewed or finished."""
        self.held = [h for h in self.held if h.consumer != consumer]
        self.consumers[consumer] = self._new_consumer()

    @rule(seconds=ticks)
    def advance_clock(self, seconds: float) -> None:
        self.clock.now += seconds
        for _ in range(2):  # timers now due run (delays promoted, expired leases swept)
            self.run(asyncio.sleep(0))

    @precondition(lambda self: any(m.state == "dead" for m in self.messages.values()))
    @rule(data=st.data())
    def revive_dead(self, data: st.DataObject) -> None:
        dead = self.browse(MessageCategory.DEAD)
        letter = data.draw(st.sampled_from(dead), label="dead letter")
        model = self.model_of(letter)
        assert model.state == "dead"
        params = letter.parameters.for_requeue_from_dead()
        assert self.run(self.broker.requeue(letter, None, params)) is True
        model.state, model.due, model.attempts_used = "pending", None, 0

    @rule()
    def drain(self) -> None:
        self.drain_everything()

    # -- invariants -------------------------------------------------------------------------

    @invariant()
    def every_message_is_in_exactly_one_place(self) -> None:
        self.observe_reclaims()
        counts = self.counts()
        assert counts["in_flight"] == len(self.in_state("inflight"))
        assert counts["dead"] == len(self.in_state("dead"))
        assert counts["ready"] + counts["delayed"] == len(self.in_state("pending"))
        dead = sorted(self.model_of(d).serial for d in self.browse(MessageCategory.DEAD))
        assert dead == sorted(m.serial for m in self.in_state("dead"))
        delayed = {self.model_of(d).serial for d in self.browse(MessageCategory.DELAYED)}
        pending = {m.serial: m for m in self.in_state("pending")}
        assert delayed <= set(pending), "a delayed message is also somewhere else"
        assert all(pending[s].due is not None for s in delayed)
        not_yet_due = {
            s for s, m in pending.items() if m.due is not None and m.due > self.clock.now
        }
        assert not_yet_due <= delayed, "a message became ready before its time"
        assert all(m.acks <= 1 for m in self.messages.values()), "a message was acked twice"

    # -- the end ----------------------------------------------------------------------------

    def drain_everything(self) -> None:
        """Let every lease and delay pass, then ack whatever is handed out until nothing is left."""
        self.advance_clock(LEASE + 10.0)
        drainer = self._new_consumer()
        for _ in range(len(self.messages) + 2):
            batch = self._fetch(drainer, -1, 1000)
            if not batch:
                break
            for delivery in batch:
                index = next(i for i, h in enumerate(self.held) if h.delivery is delivery)
                self._settle_one(index, "ack")
        counts = self.counts()
        assert counts["ready"] + counts["delayed"] + counts["in_flight"] == 0, counts
        self.held = [h for h in self.held if self.is_live(h.delivery)]

    def teardown(self) -> None:
        try:
            self.drain_everything()
            for model in self.messages.values():
                assert model.state in ("acked", "dead"), model
                assert model.acks == (1 if model.state == "acked" else 0), model
            dead = sorted(self.model_of(d).serial for d in self.browse(MessageCategory.DEAD))
            assert dead == sorted(m.serial for m in self.in_state("dead"))
        finally:
            self.loop.close()


@pytest.fixture
def quiet_broker_logs() -> Iterator[None]:
    """Expired leases and stale settlements are logged as warnings; here they are the point."""
    broker_logger = logging.getLogger("repid.brokers.memory.broker")
    level = broker_logger.level
    broker_logger.setLevel(logging.ERROR)
    yield
    broker_logger.setLevel(level)


@pytest.mark.usefixtures("quiet_broker_logs")
def test_in_memory_broker_agrees_with_its_model() -> None:
    run_state_machine_as_test(
        BrokerMachine,
        settings=settings(PROPERTY_SETTINGS, stateful_step_count=40),
    )
