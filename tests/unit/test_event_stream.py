"""The event bus core: encoding, the buffered publisher (never failing or blocking a job), the
subscription stream's filters and errors, and a subscriber's bounded feed."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from repid import (
    BrokerCapabilities,
    BrokerError,
    ConfigurationError,
    Connection,
    EventKind,
    InMemoryMessageBroker,
    Job,
    JobEvent,
    Queue,
    Router,
    Worker,
)
from repid.brokers.event_feed import EventFeed
from repid.event_stream import EventPublisher, decode_event, encode_event


def event(kind: EventKind = EventKind.SUCCEEDED, **fields: object) -> JobEvent:
    values: dict[str, object] = {
        "kind": kind,
        "job_id": "j1",
        "actor": "add",
        "queue": "default",
        "attempt": 1,
        "at": 1.5,
    }
    return JobEvent(**(values | fields))  # type: ignore[arg-type]


def test_an_event_round_trips_as_compact_json_without_none_fields() -> None:
    original = event(duration=0.25, worker="host:1:ab")
    data = encode_event(original)
    assert b" " not in data
    assert set(json.loads(data)) == {
        "kind", "job_id", "actor", "queue", "attempt", "at", "duration", "worker"
    }  # fmt: skip
    assert decode_event(data) == original


def test_unknown_fields_are_ignored_and_foreign_messages_dropped() -> None:
    body = json.loads(encode_event(event())) | {"added_later": 1}
    assert decode_event(json.dumps(body).encode()) == event()
    for foreign in (b"not json", b"[]", b'{"kind": "exploded"}', b'{"job_id": "x"}'):
        assert decode_event(foreign) is None


def test_a_long_traceback_is_cut_from_the_start_to_fit() -> None:
    trace = "".join(f"frame {n}\n" for n in range(2000)) + "ValueError: boom\n"
    data = encode_event(event(EventKind.FAILED, error="boom", traceback=trace), max_bytes=1000)
    assert len(data) <= 1000
    decoded = decode_event(data)
    assert decoded is not None
    assert decoded.error == "boom"
    assert decoded.traceback is not None
    assert decoded.traceback.startswith("...\n")
    assert decoded.traceback.endswith("ValueError: boom\n")


def test_a_long_error_is_cut_after_the_traceback() -> None:
    data = encode_event(event(EventKind.FAILED, error="é" * 5000, traceback="t" * 5000), 800)
    assert len(data) <= 800
    decoded = decode_event(data)
    assert decoded is not None
    assert decoded.traceback == "...\n"
    assert decoded.error is not None
    assert decoded.error.endswith("é")


class FailingBus(InMemoryMessageBroker):
    async def publish_event(self, data: bytes) -> None:
        raise OSError("the broker is down")


async def test_publish_errors_never_reach_the_job_and_are_logged_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    conn = Connection(FailingBus(), publish_events=True)
    router = Router()

    @router.actor
    async def add(a: int, b: int) -> int:
        return a + b

    async with conn:
        await Queue(_connection=conn).declare()
        with caplog.at_level(logging.WARNING, "repid.events"):
            for n in range(3):
                await Job("add", args={"a": n, "b": 1}, _connection=conn).enqueue()
            worker = Worker([router], messages_limit=3, handle_signals=[], _connection=conn)
            runner = await asyncio.wait_for(worker.run(), 10)
    assert runner.processed == 3
    publisher = conn.event_publisher
    assert publisher is not None
    assert publisher.dropped == 9  # enqueued, started, succeeded of each
    warnings = [r for r in caplog.records if r.name == "repid.events"]
    assert len(warnings) == 1
    assert "OSError: the broker is down" in warnings[0].getMessage()


class SlowBus(InMemoryMessageBroker):
    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.published: list[bytes] = []

    async def publish_event(self, data: bytes) -> None:
        await self.gate.wait()
        self.published.append(data)


async def test_the_buffer_is_bounded_and_close_publishes_what_it_holds() -> None:
    bus = SlowBus()
    publisher = EventPublisher(bus, buffer=2)
    publisher(event(job_id="j0"))
    await asyncio.sleep(0)  # the background task takes it and waits for the broker
    for n in range(1, 5):  # of these four, the last two fit
        publisher(event(job_id=f"j{n}"))
    assert publisher.dropped == 2
    bus.gate.set()
    await publisher.close()
    ids = [json.loads(data)["job_id"] for data in bus.published]
    assert ids == ["j0", "j3", "j4"]


async def test_close_gives_up_after_its_timeout() -> None:
    bus = SlowBus()
    publisher = EventPublisher(bus)
    publisher(event(job_id="a"))
    publisher(event(job_id="b"))
    await publisher.close(timeout=0.05)
    assert bus.published == []
    assert publisher.dropped == 2  # "a" was being published, "b" waited


async def test_the_job_id_filter() -> None:
    broker = InMemoryMessageBroker()
    async with Connection(broker, publish_events=True) as conn:
        await Queue(_connection=conn).declare()
        async with conn.events(job_id="wanted") as events:
            await Job("x", id_="other", _connection=conn).enqueue()
            await Job("x", id_="wanted", _connection=conn).enqueue()
            got = await asyncio.wait_for(anext(events), 5)
    assert (got.kind, got.job_id) == (EventKind.ENQUEUED, "wanted")


class NoBus(InMemoryMessageBroker):
    def __init__(self) -> None:
        super().__init__()
        self.capabilities = BrokerCapabilities(event_bus=False)
        self.event_bus_unavailable = "it is a test double"


def test_a_broker_without_an_event_bus_says_so() -> None:
    with pytest.raises(BrokerError, match="NoBus has no event bus: it is a test double"):
        Connection(NoBus(), publish_events=True)
    conn = Connection(NoBus())
    with pytest.raises(BrokerError, match="has no event bus"):
        conn.events()
    assert not conn.events.active  # the dispatcher's other uses are unchanged


def test_the_publisher_cannot_be_removed() -> None:
    conn = Connection(InMemoryMessageBroker(), publish_events=True)
    assert conn.events.active
    assert conn.event_publisher is not None
    with pytest.raises(ConfigurationError):
        conn.remove_event_handler(conn.event_publisher)


async def test_a_feed_drops_the_oldest_when_its_subscriber_falls_behind() -> None:
    feed = EventFeed(limit=3)
    for n in range(5):
        feed.put(str(n).encode())
    feed.close()
    assert [data async for data in feed] == [b"2", b"3", b"4"]


async def test_a_lost_feed_raises_its_error_after_the_buffered_events() -> None:
    feed = EventFeed()
    feed.put(b"last")
    feed.close(BrokerError("lost"))
    assert await anext(feed) == b"last"
    with pytest.raises(BrokerError, match="lost"):
        await anext(feed)
