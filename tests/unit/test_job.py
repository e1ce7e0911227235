"""`Job` as described in API-1.6.md: validation (`ValueError` with clear messages), its properties,
what `enqueue()` sends, results and args buckets, and the default ("magic") connection.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from _worker_helpers import TIMEOUT, magic_app, messages, running, wait_until
from pydantic import BaseModel

from repid import (
    ConfigurationError,
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    PrioritiesT,
    Queue,
    Repid,
    ResultBucket,
    Worker,
)


@pytest.fixture
async def conn() -> AsyncIterator[Connection]:
    async with magic_app() as connection:
        await Queue().declare()
        yield connection


@pytest.fixture
async def results_conn() -> AsyncIterator[Connection]:
    async with magic_app(
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True)
    ) as connection:
        await Queue().declare()
        yield connection


async def pending(conn: Connection, queue: str = "default") -> list:  # type: ignore[type-arg]
    return await messages(conn, queue, MessageCategory.NORMAL)


# -- validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "_private", "send_email", "Send-Email2", "x_1-2"])
def test_valid_names_are_accepted(name: str) -> None:
    job = Job(name, queue=name)
    assert job.name == name
    assert job.queue.name == name


@pytest.mark.parametrize(
    "name", ["", "1starts_with_digit", "-dash_first", "has space", "dot.ted", "colon:x", "é", "a\n"]
)
def test_invalid_job_names_raise_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="job name") as caught:
        Job(name)
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize("queue", ["", "9q", "has space", "q/1", "q.x"])
def test_invalid_queue_names_raise_value_error(queue: str) -> None:
    with pytest.raises(ValueError, match="queue name"):
        Job("ok", queue=queue)
    with pytest.raises(ValueError, match="queue name"):
        Queue(queue)


@pytest.mark.parametrize("id_", ["abc", "123", "a-b_c", "0f" * 16, "-", "_"])
def test_valid_ids_are_accepted(id_: str) -> None:
    job = Job("ok", id_=id_, args_id=id_, result_id=id_)
    assert job.id_ == id_
    assert job.is_unique


@pytest.mark.parametrize("id_", ["", "has space", "a.b", "a/b", "é", "a\n"])
@pytest.mark.parametrize("field", ["id_", "args_id", "result_id"])
def test_invalid_ids_raise_value_error(field: str, id_: str) -> None:
    with pytest.raises(ValueError, match="invalid"):
        Job("ok", **{field: id_})  # type: ignore[arg-type]


def test_cron_and_deferred_by_are_mutually_exclusive() -> None:
    with pytest.raises(ValueError, match="mutually exclusive"):
        Job("ok", cron="* * * * *", deferred_by=timedelta(minutes=1))


@pytest.mark.parametrize("cron", ["not a cron", "* * *", "61 * * * *", "* * * * * * * *"])
def test_invalid_cron_raises_value_error(cron: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        Job("ok", cron=cron)


def test_valid_cron_is_kept() -> None:
    job = Job("ok", cron="*/5 * * * *")
    assert job.cron == "*/5 * * * *"
    assert job.is_deferred


@pytest.mark.parametrize("field", ["deferred_by", "timeout", "ttl", "args_ttl", "result_ttl"])
@pytest.mark.parametrize(
    "value",
    [timedelta(milliseconds=999), timedelta(0), timedelta(seconds=-5), 0.5],
    ids=["999ms", "zero", "negative", "half-second-float"],
)
def test_durations_below_one_second_raise_value_error(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Job("ok", **{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("field", ["deferred_by", "timeout", "ttl", "args_ttl", "result_ttl"])
def test_one_second_durations_are_accepted(field: str) -> None:
    job = Job("ok", **{field: timedelta(seconds=1)})  # type: ignore[arg-type]
    assert getattr(job, field) == timedelta(seconds=1)


def test_numeric_durations_are_seconds() -> None:
    job = Job("ok", timeout=30, ttl=2.5)  # type: ignore[arg-type]
    assert job.timeout == timedelta(seconds=30)
    assert job.ttl == timedelta(seconds=2.5)


@pytest.mark.parametrize("retries", [-1, -100, 1.5, "3"])
def test_invalid_retries_raise_value_error(retries: object) -> None:
    with pytest.raises(ValueError, match="retries"):
        Job("ok", retries=retries)  # type: ignore[arg-type]


def test_retries_zero_and_more_are_accepted() -> None:
    assert Job("ok").retries == 0
    assert Job("ok", retries=0).retries == 0
    assert Job("ok", retries=5).retries == 5


def test_args_must_be_a_mapping() -> None:
    with pytest.raises(ValueError, match="mapping"):
        Job("ok", args=[1, 2])  # type: ignore[arg-type]


def test_validation_errors_are_configuration_errors() -> None:
    with pytest.raises(ConfigurationError):
        Job("ok", retries=-1)


def test_defaults() -> None:
    job = Job("ok")
    assert job.queue == Queue("default")
    assert job.priority is PrioritiesT.MEDIUM
    assert job.id_ is None
    assert job.timeout == timedelta(minutes=10)
    assert job.result_ttl == timedelta(days=1)
    assert job.ttl is None
    assert job.args is None
    assert job.store_result is None
    assert job.use_args_bucketer is None


def test_priority_accepts_ints_and_rejects_unknown() -> None:
    assert Job("ok", priority=0).priority is PrioritiesT.HIGH  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Job("ok", priority=7)  # type: ignore[arg-type]


# -- queue -----------------------------------------------------------------------------------


def test_queue_given_as_string_becomes_a_queue() -> None:
    job = Job("ok", queue="emails")
    assert isinstance(job.queue, Queue)
    assert job.queue.name == "emails"


def test_queue_given_as_queue_is_kept() -> None:
    queue = Queue("emails")
    job = Job("ok", queue=queue)
    assert job.queue is queue


# -- properties ------------------------------------------------------------------------------


def test_is_unique_only_with_an_id() -> None:
    assert not Job("ok").is_unique
    assert Job("ok", id_="fixed").is_unique


def test_is_deferred() -> None:
    assert not Job("ok").is_deferred
    assert Job("ok", deferred_until=datetime.now(tz=UTC) + timedelta(hours=1)).is_deferred
    assert Job("ok", deferred_by=timedelta(minutes=1)).is_deferred
    assert Job("ok", cron="0 * * * *").is_deferred


def test_is_overdue_counts_ttl_from_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    now = datetime.now(tz=UTC)
    assert not Job("ok").is_overdue
    # a past deferred_until alone is not "overdue" (repid 1.6): only a ttl makes a job expire
    assert not Job("ok", deferred_until=now - timedelta(seconds=5)).is_overdue
    job = Job("ok", ttl=timedelta(seconds=10))
    assert not job.is_overdue
    created = time.time()
    monkeypatch.setattr("repid.job.time.time", lambda: created + 11)
    assert job.is_overdue


def test_naive_deferred_until_is_local_time() -> None:
    naive_past = datetime.now() - timedelta(minutes=1)
    job = Job("ok", deferred_until=naive_past)
    assert job.deferred_until is not None
    assert job.deferred_until.tzinfo is not None
    assert job.deferred_until < datetime.now(tz=UTC)
    future = Job("ok", deferred_until=datetime.now() + timedelta(minutes=1)).deferred_until
    assert future is not None
    assert future > datetime.now(tz=UTC)


# -- enqueue ---------------------------------------------------------------------------------


async def test_enqueue_returns_the_job(conn: Connection) -> None:
    job = Job("ok", args={"x": 1})
    assert await job.enqueue() is job


async def test_enqueue_sends_name_args_and_parameters(conn: Connection) -> None:
    deferred = datetime.now(tz=UTC) + timedelta(hours=1)
    await Queue("mail").declare()
    await Job(
        "send",
        queue="mail",
        priority=PrioritiesT.HIGH,
        id_="order-1",
        retries=3,
        timeout=timedelta(seconds=30),
        ttl=timedelta(minutes=5),
        args={"to": "a@b.c", "when": datetime(2030, 1, 2, tzinfo=UTC)},
    ).enqueue()
    await Job("later", queue="mail", deferred_until=deferred).enqueue()
    [message] = await pending(conn, "mail")
    assert message.key.id_ == "order-1"
    assert message.key.topic == "send"
    assert message.key.queue == "mail"
    assert message.key.priority == PrioritiesT.HIGH
    assert message.raw_payload == '{"to":"a@b.c","when":"2030-01-02T00:00:00Z"}'
    params = message.parameters
    assert params.execution_timeout == timedelta(seconds=30)
    assert params.retries.max_amount == 3
    assert params.retries.actual_amount == 0
    assert params.timer.ttl == timedelta(minutes=5)
    assert params.result is None  # no results bucket broker
    [later] = await messages(conn, "mail", MessageCategory.DELAYED)
    assert later.key.topic == "later"
    assert later.parameters.delay.delay_until == deferred


async def test_enqueue_without_args_sends_empty_payload(conn: Connection) -> None:
    await Job("ok").enqueue()
    [message] = await pending(conn)
    assert message.raw_payload == ""


async def test_unique_job_is_not_duplicated_while_pending(conn: Connection) -> None:
    job = Job("ok", id_="only-once")
    await job.enqueue()
    await job.enqueue()
    await Job("ok", id_="only-once", args={"other": 1}).enqueue()
    assert conn.message_broker.counts("default")["ready"] == 1


async def test_job_without_id_gets_a_new_id_per_enqueue(conn: Connection) -> None:
    job = Job("ok")
    await job.enqueue()
    await job.enqueue()
    ids = {m.key.id_ for m in await pending(conn)}
    assert len(ids) == 2


@dataclasses.dataclass
class Point:
    x: int
    y: int


class Customer(BaseModel):
    name: str
    tags: list[str] = []


async def test_args_serialise_models_dataclasses_and_time(conn: Connection) -> None:
    await Job(
        "ok",
        args={
            "customer": Customer(name="Ann"),
            "point": Point(1, 2),
            "delay": timedelta(seconds=90),
            "when": datetime(2030, 1, 1, 12, tzinfo=UTC),
        },
    ).enqueue()
    [message] = await pending(conn)
    assert message.raw_payload == (
        '{"customer":{"name":"Ann","tags":[]},"point":{"x":1,"y":2},'
        '"delay":"PT1M30S","when":"2030-01-01T12:00:00Z"}'
    )


async def test_magic_connection_missing_raises_value_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Repid, "_magic_connection", None)
    with pytest.raises(ValueError, match="connection"):
        Repid.get_magic_connection()
    job = Job("ok")  # building a job needs no connection
    with pytest.raises(ValueError, match="connection"):
        await job.enqueue()
    with pytest.raises(ValueError, match="connection"):
        await Queue("x").declare()


async def test_explicit_connection_does_not_need_magic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Repid, "_magic_connection", None)
    broker = InMemoryMessageBroker()
    conn = Connection(broker)
    await conn.connect()
    await Queue("q", _connection=conn).declare()
    await Job("ok", queue="q", _connection=conn).enqueue()
    assert broker.counts("q")["ready"] == 1


async def test_magic_restores_the_previous_default() -> None:
    outer = Connection(InMemoryMessageBroker())
    inner = Connection(InMemoryMessageBroker())
    previous = Repid._magic_connection
    async with Repid(outer).magic() as got_outer:
        assert got_outer is outer
        assert Repid.get_magic_connection() is outer
        async with Repid(inner).magic(auto_disconnect=True):
            assert Repid.get_magic_connection() is inner
        assert not inner.is_open
        assert Repid.get_magic_connection() is outer
    assert outer.is_open  # auto_disconnect defaults to False
    assert Repid._magic_connection is previous
    await outer.disconnect()


# -- results ---------------------------------------------------------------------------------


async def test_result_raises_without_results_bucket_broker(conn: Connection) -> None:
    job = await Job("ok").enqueue()
    with pytest.raises(ValueError, match="results_bucket_broker"):
        await job.result


async def test_store_result_true_without_results_broker_raises(conn: Connection) -> None:
    with pytest.raises(ValueError, match="results_bucket_broker"):
        await Job("ok", store_result=True).enqueue()
    assert conn.message_broker.counts("default")["ready"] == 0


async def test_store_result_defaults_to_having_a_results_broker(results_conn: Connection) -> None:
    await Job("stored").enqueue()
    await Job("not_stored", store_result=False).enqueue()
    by_name = {m.key.topic: m.parameters for m in await pending(results_conn)}
    stored = by_name["stored"].result
    assert stored is not None
    assert stored.ttl == timedelta(days=1)
    assert by_name["not_stored"].result is None


async def test_result_id_and_ttl_are_used(results_conn: Connection) -> None:
    await Job("ok", result_id="my-result", result_ttl=timedelta(hours=2)).enqueue()
    [message] = await pending(results_conn)
    assert message.parameters.result is not None
    assert message.parameters.result.id_ == "my-result"
    assert message.parameters.result.ttl == timedelta(hours=2)


async def test_result_is_none_before_the_job_ran_then_the_stored_bucket(
    results_conn: Connection,
) -> None:
    worker = Worker(handle_signals=[])

    @worker.actor
    async def double(n: int) -> dict[str, int]:
        return {"n": n * 2}

    job = await Job("double", args={"n": 21}).enqueue()
    assert await job.result is None
    async with running(worker):

        async def stored() -> bool:
            return await job.result is not None

        await wait_until(stored, what="the stored result")
    result = await job.result
    assert isinstance(result, ResultBucket)
    assert result.success
    assert result.data == '{"n":42}'
    assert result.exception is None
    assert 0 < result.started_when <= result.finished_when


async def test_result_of_a_failed_job_has_the_exception(results_conn: Connection) -> None:
    worker = Worker(handle_signals=[])

    @worker.actor
    async def broken() -> None:
        raise RuntimeError("nope")

    job = await Job("broken").enqueue()
    async with running(worker):

        async def stored() -> bool:
            return await job.result is not None

        await wait_until(stored, what="the stored failure")
    result = await job.result
    assert result is not None
    assert not result.success
    # 1.6's layout: the message as data, the class as exception; the traceback beside them.
    assert result.data == "nope"
    assert result.exception == result.exception_type == "RuntimeError"
    assert result.traceback is not None
    assert "RuntimeError: nope" in result.traceback


# -- args bucket -----------------------------------------------------------------------------


async def test_args_go_to_the_args_bucket_when_there_is_one() -> None:
    bucket = InMemoryBucketBroker()
    async with magic_app(args_bucket_broker=bucket) as conn:
        await Queue().declare()
        worker = Worker(handle_signals=[])
        got = []

        @worker.actor
        async def greet(name: str) -> None:
            got.append(name)

        await Job("greet", args={"name": "Ann"}, args_id="greet-args").enqueue()
        [message] = await pending(conn)
        assert message.raw_payload == ""
        assert message.parameters.args_id == "greet-args"
        stored = await bucket.get_bucket("greet-args")
        assert stored is not None
        assert stored.data == '{"name":"Ann"}'
        async with running(worker):
            await wait_until(lambda: got == ["Ann"], what="the actor")


async def test_use_args_bucketer_false_keeps_args_inline() -> None:
    bucket = InMemoryBucketBroker()
    async with magic_app(args_bucket_broker=bucket) as conn:
        await Queue().declare()
        await Job("ok", args={"a": 1}, use_args_bucketer=False).enqueue()
        [message] = await pending(conn)
    assert message.raw_payload == '{"a":1}'
    assert message.parameters.args_id is None
    assert len(bucket) == 0


async def test_use_args_bucketer_true_without_bucket_raises(conn: Connection) -> None:
    with pytest.raises(ValueError, match="args_bucket_broker"):
        await Job("ok", args={"a": 1}, use_args_bucketer=True).enqueue()


async def test_args_ttl_is_applied_to_the_bucket() -> None:
    bucket = InMemoryBucketBroker()
    async with magic_app(args_bucket_broker=bucket):
        await Queue().declare()
        await Job("ok", args={"a": 1}, args_id="a1", args_ttl=timedelta(minutes=3)).enqueue()
    stored = await bucket.get_bucket("a1")
    assert stored is not None
    assert stored.ttl == timedelta(minutes=3)


async def test_missing_args_bucket_is_a_validation_dead_letter() -> None:
    bucket = InMemoryBucketBroker()
    async with magic_app(args_bucket_broker=bucket) as conn:
        await Queue().declare()
        worker = Worker(handle_signals=[])

        @worker.actor
        async def greet(name: str) -> None:
            raise AssertionError("must not run")

        await Job("greet", args={"name": "Ann"}, args_id="gone").enqueue()
        await bucket.delete_bucket("gone")
        async with running(worker):
            await wait_until(
                lambda: conn.message_broker.counts("default")["dead"] == 1, TIMEOUT, "dead letter"
            )
        [dead] = await messages(conn, "default", MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "validation_error"
    assert "gone" in (dead.dead_letter.error_message or "")


def test_connection_checks_bucket_kinds() -> None:
    with pytest.raises(ValueError, match="use_result_bucket=True"):
        Connection(InMemoryMessageBroker(), results_bucket_broker=InMemoryBucketBroker())
    with pytest.raises(ValueError, match="use_result_bucket=False"):
        Connection(
            InMemoryMessageBroker(),
            args_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
        )


def test_config_serializer_is_the_default_for_new_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    from repid import Config, default_serializer

    seen: list[object] = []

    def recording(data: object) -> str:
        seen.append(data)
        return default_serializer(data)

    monkeypatch.setattr(Config, "SERIALIZER", recording)
    assert Job("ok", args={"a": 1}).payload == '{"a":1}'
    assert seen == [{"a": 1}]
    assert Job("ok", args={"a": 2}, serializer=default_serializer).payload == '{"a":2}'
    assert seen == [{"a": 1}]  # an explicit serializer wins
