"""Lifecycle events published on the broker (`Connection(publish_events=True)`) reach a separate
connection that subscribes with `connection.events(...)`, filtered, and unsubscribing is clean."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from repid import Connection, EventKind, InMemoryMessageBroker, JobEvent
from repid.brokers.base import SupportsEventBus, event_bus_of
from repid.event_stream import EventStream

from .conftest import Cleanup, NewQueue
from .specs import BrokerSpec
from .support import WAIT, job, make_worker, router_for, running, wait_until


@pytest.fixture
async def publisher(broker_spec: BrokerSpec, _cleanup: Cleanup) -> Connection:
    """A connection to the broker under test that publishes its events."""
    base = broker_spec.make()
    conn = Connection(
        base.raw_message_broker,
        results_bucket_broker=base.raw_results_bucket_broker,
        publish_events=True,
    )
    await conn.connect()
    _cleanup.connections.append(conn)
    return conn


@pytest.fixture
async def subscriber(
    publisher: Connection, broker_spec: BrokerSpec, _cleanup: Cleanup
) -> Connection:
    """Another connection, as another process opens it (without publishing). The in-memory
    broker's state belongs to one broker object, so there it shares the publisher's."""
    if isinstance(publisher.raw_message_broker, InMemoryMessageBroker):
        return Connection(publisher.raw_message_broker)
    conn = broker_spec.make()
    await conn.connect()
    _cleanup.connections.append(conn)
    return conn


def bus_of(conn: Connection) -> SupportsEventBus:
    bus = event_bus_of(conn.raw_message_broker)
    assert bus is not None
    return bus


async def collect(
    events: AsyncIterator[JobEvent], until: EventKind, job_id: str | None
) -> list[JobEvent]:
    """Events read until `until` of `job_id` arrives (the test fails after a deadline)."""
    seen: list[JobEvent] = []
    try:
        async with asyncio.timeout(3 * WAIT):
            async for event in events:
                seen.append(event)
                if event.kind == until and event.job_id == job_id:
                    return seen
    except TimeoutError:
        pass
    raise AssertionError(f"no {until} event of {job_id} within {3 * WAIT}s; saw {seen}")


async def test_a_separate_connection_receives_a_jobs_events_in_order(
    publisher: Connection, subscriber: Connection, new_queue: NewQueue
) -> None:
    queue = await new_queue(on=publisher)
    router = router_for(queue)

    @router.actor
    async def add(a: int, b: int) -> int:
        return a + b

    async with subscriber.events(queue=queue.name) as events:
        sent = await job(publisher, "add", queue, args={"a": 1, "b": 2}).enqueue()
        job_id = sent.last_id
        assert job_id is not None
        async with running(make_worker(publisher, router)):
            seen = await collect(events, EventKind.SUCCEEDED, job_id)

    mine = [event for event in seen if event.job_id == job_id]
    assert [event.kind for event in mine] == [
        EventKind.ENQUEUED,
        EventKind.STARTED,
        EventKind.SUCCEEDED,
    ]
    for event in mine:
        assert (event.actor, event.queue, event.attempt) == ("add", queue.name, 1)
        assert isinstance(event.at, float)
    enqueued, started, succeeded = mine
    assert enqueued.worker is None
    assert started.worker is not None
    assert succeeded.worker == started.worker
    assert succeeded.duration is not None
    assert succeeded.duration >= 0
    assert succeeded.error is None


async def test_kinds_and_queue_filter_the_stream(
    publisher: Connection, subscriber: Connection, new_queue: NewQueue
) -> None:
    watched, other = await new_queue(on=publisher), await new_queue(on=publisher)
    routers = [router_for(watched), router_for(other)]
    for router, name in zip(routers, ("watched", "other"), strict=True):

        @router.actor(name=name)
        async def noop() -> None:
            return None

    async with (
        subscriber.events() as everything,
        subscriber.events(kinds=["succeeded"], queue=watched.name) as filtered,
        running(make_worker(publisher, *routers)),
    ):
        first = await job(publisher, "other", other).enqueue()
        await collect(everything, EventKind.SUCCEEDED, first.last_id)
        second = await job(publisher, "watched", watched).enqueue()
        # One publisher's events arrive in order: anything `filtered` let through from the
        # other queue or of another kind would come before this one.
        event = await asyncio.wait_for(anext(filtered), 3 * WAIT)
    assert (event.kind, event.job_id, event.queue) == (
        EventKind.SUCCEEDED,
        second.last_id,
        watched.name,
    )


async def test_breaking_out_of_the_loop_unsubscribes(
    publisher: Connection, subscriber: Connection, new_queue: NewQueue
) -> None:
    queue = await new_queue(on=publisher)
    bus = bus_of(subscriber)
    before = bus.event_subscriptions

    async def first_event() -> JobEvent:
        async for event in subscriber.events(queue=queue.name):
            return event
        raise AssertionError("the stream ended")

    reader = asyncio.create_task(first_event())
    await wait_until(lambda: bus.event_subscriptions == before + 1, "the subscription")
    sent = await job(publisher, "noop", queue).enqueue()
    event = await asyncio.wait_for(reader, 3 * WAIT)
    assert (event.kind, event.job_id) == (EventKind.ENQUEUED, sent.last_id)
    await wait_until(lambda: bus.event_subscriptions == before, "unsubscribing after break")


async def test_closing_the_stream_unsubscribes_and_ends_it(subscriber: Connection) -> None:
    bus = bus_of(subscriber)
    before = bus.event_subscriptions
    stream: EventStream = subscriber.events()
    async with stream:
        assert bus.event_subscriptions == before + 1
    assert bus.event_subscriptions == before
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_a_failure_arrives_with_its_error_cut_to_the_brokers_limit(
    publisher: Connection, subscriber: Connection, new_queue: NewQueue
) -> None:
    queue = await new_queue(on=publisher)
    router = router_for(queue)
    message = "boom " + "x" * 6000 + " end"

    @router.actor
    async def explode() -> None:
        raise ValueError(message)

    async with subscriber.events(queue=queue.name, kinds=["failed"]) as events:
        sent = await job(publisher, "explode", queue).enqueue()
        async with running(make_worker(publisher, router)):
            (failed,) = await collect(events, EventKind.FAILED, sent.last_id)
    assert failed.error_type == "ValueError"
    assert failed.error is not None
    assert failed.error.endswith(" end")
    assert failed.traceback is not None
    assert failed.traceback.rstrip().endswith(" end")  # the innermost part is kept
    limit = bus_of(publisher).max_event_size
    if limit is not None and limit < 20_000:
        assert failed.traceback.startswith("...\n")
