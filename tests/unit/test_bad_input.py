"""SPEC §2's bad-input table on the in-memory broker: bad input never crashes the worker and never
silently disappears. Each worker test enqueues the bad input, then a good job, and checks that the
worker processed the good one (it stayed up) and that the bad one is in the dead part of its queue
with its reason.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from _worker_helpers import (
    TIMEOUT,
    FlakyBroker,
    dead_letters,
    magic_app,
    running,
    wait_until,
)

from repid import (
    Connection,
    InMemoryMessageBroker,
    Job,
    MessageTooLargeError,
    Queue,
    QueueNotDeclaredError,
    SerializationError,
    Worker,
)

EMPTY = {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}


@pytest.fixture
def broker() -> InMemoryMessageBroker:
    return InMemoryMessageBroker()


@pytest.fixture
async def conn(broker: InMemoryMessageBroker) -> AsyncIterator[Connection]:
    async with magic_app(broker) as connection:
        await Queue().declare()
        yield connection


class Recorder:
    """A worker with a `good` actor (records its calls) and an `add(a: int, b: int)` actor."""

    def __init__(self, **worker_kwargs: object) -> None:
        self.good_calls: list[int] = []
        self.add_calls: list[tuple[int, int]] = []
        self.good_done = asyncio.Event()
        worker_kwargs.setdefault("handle_signals", [])
        self.worker = Worker(**worker_kwargs)  # type: ignore[arg-type]

        @self.worker.actor
        async def good(n: int) -> None:
            self.good_calls.append(n)
            self.good_done.set()

        @self.worker.actor
        async def add(a: int, b: int) -> int:
            self.add_calls.append((a, b))
            return a + b

    async def wait_good(self) -> None:
        await asyncio.wait_for(self.good_done.wait(), TIMEOUT)


async def dead_reasons(conn: Connection, queue: str = "default") -> list[str]:
    reasons = []
    for message in await dead_letters(conn, queue):
        assert message.dead_letter is not None
        reasons.append(message.dead_letter.reason)
    return reasons


# -- payload that is not valid JSON / not our format ------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\x00\xffnot json at all", id="binary-garbage"),
        pytest.param(b'{"unterminated": ', id="truncated-json"),
        pytest.param(b"[1, 2, 3]", id="json-not-an-envelope"),
        pytest.param(b'{"v": 99, "k": ["id", "good", "default", 1]}', id="unknown-version"),
        pytest.param(b'{"v": 1, "k": ["id", "good"], "p": "", "m": {}}', id="malformed-envelope"),
        pytest.param(b"", id="empty-body"),
    ],
)
async def test_undecodable_payload_is_dead_lettered_with_raw_bytes(
    conn: Connection, broker: InMemoryMessageBroker, raw: bytes
) -> None:
    app = Recorder()
    broker.inject_raw("default", raw)
    await Job("good", args={"n": 1}).enqueue()
    async with running(app.worker):
        await app.wait_good()
        await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the dead letter")
    assert app.good_calls == [1]
    [dead] = await dead_letters(conn)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "decode_error"
    assert dead.dead_letter.error_message  # says what is wrong
    assert dead.delivery.raw == raw
    assert broker.counts("default") == {**EMPTY, "dead": 1}


async def test_valid_envelope_injected_raw_is_processed(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    """The control case: inject_raw of a real envelope is decoded, not dead-lettered."""
    from repid.codec import encode_message
    from repid.data import Parameters, RoutingKey

    app = Recorder()
    broker.inject_raw(
        "default", encode_message(RoutingKey("raw-ok", "good", "default"), '{"n": 7}', Parameters())
    )
    async with running(app.worker):
        await app.wait_good()
    assert app.good_calls == [7]
    assert await dead_reasons(conn) == []


# -- job name with no actor in this worker ---------------------------------------------------


async def test_unknown_actor_is_dead_lettered(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    app = Recorder()
    await Job("nobody_handles_this", args={"x": 1}, retries=3).enqueue()
    await Job("good", args={"n": 2}).enqueue()
    async with running(app.worker) as task:
        await app.wait_good()
        await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the dead letter")
    assert app.good_calls == [2]
    [dead] = await dead_letters(conn)
    assert dead.key.topic == "nobody_handles_this"
    assert dead.raw_payload == '{"x":1}'  # kept for a worker that has the actor
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "unknown_actor"
    assert "nobody_handles_this" in (dead.dead_letter.error_message or "")
    assert broker.counts("default") == {**EMPTY, "dead": 1}
    assert (await task).dead_lettered == 1


# -- args that fail validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        pytest.param({"a": "abc", "b": 1}, "a", id="wrong-type"),
        pytest.param({"a": 1}, "b", id="missing-required"),
        pytest.param({"a": 1, "b": 2, "c": 3}, "c", id="unexpected-extra"),
        pytest.param({"a": [1], "b": 2}, "a", id="list-for-int"),
    ],
)
async def test_invalid_args_are_dead_lettered_without_retries(
    conn: Connection, broker: InMemoryMessageBroker, args: dict[str, object], complaint: str
) -> None:
    app = Recorder()
    await Job("add", args=args, retries=3).enqueue()
    await Job("good", args={"n": 3}).enqueue()
    async with running(app.worker) as task:
        await app.wait_good()
        await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the dead letter")
    runner = await task
    assert app.add_calls == []  # the actor was never called
    assert app.good_calls == [3]
    assert runner.retried == 0
    [dead] = await dead_letters(conn)
    info = dead.dead_letter
    assert info is not None
    assert info.reason == "validation_error"
    assert info.attempts == 1
    assert complaint in (info.error_message or "")
    assert dead.parameters.retries.actual_amount == 0
    assert broker.counts("default") == {**EMPTY, "dead": 1}


async def test_args_for_an_actor_without_parameters_are_a_validation_error(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    app = Recorder()
    calls = []

    @app.worker.actor
    async def no_params() -> None:
        calls.append(1)

    await Job("no_params", args={"surprise": 1}, retries=2).enqueue()
    await Job("good", args={"n": 4}).enqueue()
    async with running(app.worker):
        await app.wait_good()
        await wait_until(lambda: broker.counts("default")["dead"] == 1, what="the dead letter")
    assert calls == []
    assert await dead_reasons(conn) == ["validation_error"]


# -- args that cannot be serialised at enqueue -----------------------------------------------


@pytest.mark.parametrize(
    "make_value",
    [
        pytest.param(object, id="object"),
        pytest.param(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM), id="socket"),
        pytest.param(lambda: {"nested": [1, object()]}, id="nested-object"),
        pytest.param(lambda: lambda: None, id="function"),
    ],
)
async def test_unserialisable_args_raise_type_error_naming_the_argument(
    conn: Connection, broker: InMemoryMessageBroker, make_value: object
) -> None:
    value = make_value()  # type: ignore[operator]
    try:
        job = Job("add", args={"a": 1, "culprit": value})
        with pytest.raises(TypeError, match="culprit") as caught:
            await job.enqueue()
    finally:
        if isinstance(value, socket.socket):
            value.close()
    assert isinstance(caught.value, SerializationError)
    assert broker.counts("default") == EMPTY  # nothing sent


async def test_unserialisable_args_leave_the_queue_usable(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    with pytest.raises(TypeError):
        await Job("good", args={"n": object()}).enqueue()
    app = Recorder()
    await Job("good", args={"n": 5}).enqueue()
    async with running(app.worker):
        await app.wait_good()
    assert app.good_calls == [5]
    assert broker.counts("default") == EMPTY


# -- message larger than the broker's limit --------------------------------------------------


async def test_too_large_message_raises_at_enqueue_and_sends_nothing() -> None:
    broker = InMemoryMessageBroker(max_message_size=1000)
    async with magic_app(broker):
        await Queue().declare()
        with pytest.raises(MessageTooLargeError, match="1000") as caught:
            await Job("good", args={"blob": "x" * 2000}).enqueue()
        assert caught.value.limit == 1000
        assert caught.value.size > 1000
        assert isinstance(caught.value, ValueError)
        assert broker.counts("default") == EMPTY
        # Just under the limit goes through.
        await Job("good", args={"blob": "x" * 900}).enqueue()
        assert broker.counts("default")["ready"] == 1


async def test_too_large_message_limit_counts_bytes_not_characters() -> None:
    broker = InMemoryMessageBroker(max_message_size=1000)
    async with magic_app(broker):
        await Queue().declare()
        blob = "é" * 600  # 600 characters, 1200 bytes of UTF-8
        assert len(blob.encode()) > 1000
        with pytest.raises(MessageTooLargeError):
            await Job("good", args={"blob": blob}).enqueue()
        assert broker.counts("default") == EMPTY


# -- enqueue into an undeclared queue --------------------------------------------------------


async def test_enqueue_into_undeclared_queue_raises_key_error_naming_it(
    conn: Connection, broker: InMemoryMessageBroker
) -> None:
    with pytest.raises(KeyError, match="never_declared") as caught:
        await Job("good", queue="never_declared", args={"n": 1}).enqueue()
    assert isinstance(caught.value, QueueNotDeclaredError)
    assert caught.value.queue_name == "never_declared"
    assert "never_declared" not in broker.queue_names()
    assert broker.counts("default") == EMPTY


# -- broker unreachable / connection dropped -------------------------------------------------


async def test_worker_survives_dropped_consumer_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = FlakyBroker()
    broker.consume_failures = 3  # 0.1 + 0.2 + 0.4 s of backoff on one lane
    async with magic_app(broker):
        await Queue().declare()
        app = Recorder(tasks_limit=1)
        await Job("good", args={"n": 6}).enqueue()
        with caplog.at_level(logging.ERROR, logger="repid.worker"):
            async with running(app.worker) as task:
                await app.wait_good()
        runner = await task
    assert broker.failed_consumes == 3
    assert app.good_calls == [6]
    assert runner.processed == 1
    assert broker.counts("default") == EMPTY
    failures_logged = [
        r for r in caplog.records if r.name == "repid.worker" and r.levelno >= logging.WARNING
    ]
    assert len(failures_logged) == 3  # one per failed consume, each with its backoff


async def test_job_enqueued_during_outage_runs_after_it(caplog: pytest.LogCaptureFixture) -> None:
    broker = FlakyBroker()
    broker.down = True
    async with magic_app(broker):
        await Queue().declare()
        app = Recorder(tasks_limit=2)
        with caplog.at_level(logging.ERROR, logger="repid.worker"):
            async with running(app.worker):
                await wait_until(lambda: broker.failed_consumes >= 4, what="failed consumes")
                await Job("good", args={"n": 8}).enqueue()
                assert not app.good_done.is_set()
                broker.down = False
                await app.wait_good()
    assert app.good_calls == [8]
    assert broker.counts("default") == EMPTY


# -- an actor raising ------------------------------------------------------------------------


class PaymentDeclinedError(Exception):
    pass


async def test_actor_exception_is_dead_lettered_with_error_details() -> None:
    async with magic_app() as conn:
        await Queue().declare()
        app = Recorder()
        calls = []

        @app.worker.actor(retry_policy=lambda _n=1: timedelta(0))
        async def charge(amount: int) -> None:
            calls.append(amount)
            raise PaymentDeclinedError(f"card declined for {amount}")

        await Job("charge", args={"amount": 42}, retries=2).enqueue()
        async with running(app.worker) as task:
            await wait_until(lambda: len(calls) == 3, what="three attempts")
            await wait_until(
                lambda: conn.message_broker.counts("default")["dead"] == 1, what="the dead letter"
            )
            await Job("good", args={"n": 9}).enqueue()
            await app.wait_good()
        runner = await task
        [dead] = await dead_letters(conn)
        assert conn.message_broker.counts("default") == {**EMPTY, "dead": 1}
    assert calls == [42, 42, 42]
    assert runner.retried == 2
    assert runner.failed == 3
    info = dead.dead_letter
    assert info is not None
    assert info.reason == "exception"
    assert info.error_type == "PaymentDeclinedError"
    assert info.error_message == "card declined for 42"
    assert info.traceback is not None
    assert "PaymentDeclinedError: card declined for 42" in info.traceback
    assert "in charge" in info.traceback  # the actor's frame is there
    assert info.attempts == 3
    assert info.dead_at > 0


async def test_sync_actor_exception_is_dead_lettered_and_worker_goes_on() -> None:
    async with magic_app() as conn:
        await Queue().declare()
        app = Recorder()

        @app.worker.actor
        def explode() -> None:
            raise ZeroDivisionError("division by zero in a thread")

        await Job("explode").enqueue()
        await Job("good", args={"n": 10}).enqueue()
        async with running(app.worker):
            await app.wait_good()
            await wait_until(
                lambda: conn.message_broker.counts("default")["dead"] == 1, what="the dead letter"
            )
        [dead] = await dead_letters(conn)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "exception"
    assert dead.dead_letter.error_type == "ZeroDivisionError"
    assert dead.dead_letter.attempts == 1


# -- ack failure -----------------------------------------------------------------------------


async def test_failed_ack_is_logged_and_message_redelivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = FlakyBroker(lease_duration=0.3)
    broker.ack_failures = 1
    async with magic_app(broker):
        await Queue().declare()
        app = Recorder()
        runs = []

        @app.worker.actor
        async def once_or_more(n: int) -> None:
            runs.append(n)

        await Job("once_or_more", args={"n": 11}).enqueue()
        with caplog.at_level(logging.WARNING):
            async with running(app.worker):
                await wait_until(lambda: len(runs) == 2, what="the redelivery")
                await wait_until(lambda: broker.counts("default") == EMPTY, what="the ack")
                await Job("good", args={"n": 12}).enqueue()
                await app.wait_good()
    assert broker.failed_acks == 1
    assert runs == [11, 11]  # at-least-once: a lost ack means a second run, not a lost job
    assert any(r.name == "repid.worker" and "ack" in r.getMessage().lower() for r in caplog.records)
    assert broker.counts("default") == EMPTY
