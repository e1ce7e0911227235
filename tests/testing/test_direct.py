"""The plugin used directly by this suite (no inner pytest session)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from repid import (
    Connection,
    DeadLetterReason,
    Job,
    MessageCategory,
    Queue,
    Repid,
    Router,
    RouterDefaults,
    Worker,
)
from repid.errors import QueueNotDeclaredError
from repid.testing import RecordedEvent, RepidTestEnvironment, TestMessageBroker

router = Router()
calls: list[tuple[str, object]] = []


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor
def sync_mul(a: int, b: int) -> int:
    calls.append(("sync_mul", (a, b)))
    return a * b


@router.actor
async def boom() -> None:
    raise ZeroDivisionError("boom")


@router.actor(queue="other")
async def elsewhere(text: str) -> str:
    return text.upper()


@router.actor
async def fan_out(n: int) -> None:
    for i in range(n):
        await Job("add", args={"a": i, "b": i}).enqueue()


retry_router = Router(defaults=RouterDefaults(retry_policy=lambda _n=1: 30))


@retry_router.actor
async def flaky() -> None:
    raise RuntimeError("flaky")


@pytest.mark.repid(routers=[router])
async def test_marker_gives_a_connected_default_app(
    repid_app: Repid, repid_connection: Connection
) -> None:
    assert repid_app.connection is repid_connection
    assert Repid.get_magic_connection() is repid_connection
    assert repid_connection.is_open
    assert isinstance(repid_connection.raw_message_broker, TestMessageBroker)
    assert repid_connection.args_bucket_broker is not None
    assert repid_connection.results_bucket_broker is not None


@pytest.mark.repid(routers=[router])
async def test_enqueue_runs_the_actor_before_returning() -> None:
    job = await Job("add", args={"a": 1, "b": "2"}).enqueue()
    result = await job.result
    assert result is not None
    assert result.success
    assert result.data == "3"


@pytest.mark.repid(routers=[router])
async def test_sync_actor_runs_in_a_thread(repid_get_mocked_actor) -> None:
    mock = repid_get_mocked_actor("sync_mul")
    job = await Job("sync_mul", args={"a": 6, "b": 7}).enqueue()
    mock.assert_called_once_with(a=6, b=7)
    assert ("sync_mul", (6, 7)) in calls
    result = await job.result
    assert result is not None
    assert result.data == "42"


@pytest.mark.repid(routers=[router])
async def test_mocked_async_actor_records_converted_args(repid_get_mocked_actor) -> None:
    mock = repid_get_mocked_actor("add")
    assert repid_get_mocked_actor("add") is mock
    await Job("add", args={"a": "5", "b": 6}).enqueue()
    mock.assert_awaited_once_with(a=5, b=6)
    # the routers themselves are untouched
    assert router.actors["add"].fn is add


@pytest.mark.repid(routers=[router])
async def test_unknown_mocked_actor(repid_get_mocked_actor) -> None:
    with pytest.raises(KeyError, match="nope"):
        repid_get_mocked_actor("nope")


@pytest.mark.repid(routers=[router])
async def test_event_log(repid_get_event_log) -> None:
    await Job("add", args={"a": 1, "b": 2}).enqueue()
    log: list[RecordedEvent] = repid_get_event_log()
    names = [e.name for e in log if e.event in {"enqueue", "actor_run", "ack"}]
    assert names == [
        "before_enqueue",
        "before_actor_run",
        "after_actor_run",
        "before_ack",
        "after_ack",
        "after_enqueue",
    ]
    run = repid_get_event_log("after_actor_run")[0]
    assert run["kwargs"] == {"a": 1, "b": 2}
    assert run.result == 3
    assert repid_get_event_log("enqueue")[0]["key"].topic == "add"


@pytest.mark.repid(routers=[router])
async def test_failing_actor_is_dead_lettered(repid_get_in_memory_queue) -> None:
    job = await Job("boom").enqueue()
    queue = repid_get_in_memory_queue("default")
    assert queue.counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    dead = queue.dead[0]
    assert dead.actor == "boom"
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == DeadLetterReason.EXCEPTION.value
    assert dead.dead_letter.error_type == "ZeroDivisionError"
    messages = [
        m async for m in Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True)
    ]
    assert [m.key.topic for m in messages] == ["boom"]
    result = await job.result
    assert result is not None
    assert not result.success


@pytest.mark.repid(routers=[retry_router])
async def test_retry_is_delayed_not_rerun(repid_get_in_memory_queue, repid_test_broker) -> None:
    await Job("flaky", retries=2).enqueue()
    queue = repid_get_in_memory_queue(Queue())
    assert queue.counts["delayed"] == 1
    assert queue.delayed[0].attempt == 2
    assert await repid_test_broker.run_pending() == 0  # not due yet
    assert await repid_test_broker.run_pending(include_delayed=True) == 1
    assert queue.delayed[0].attempt == 3
    assert await repid_test_broker.run_pending(include_delayed=True) == 1
    assert queue.counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    assert queue.dead[0].attempt == 3


@pytest.mark.repid(routers=[router])
async def test_deferred_jobs_stay_delayed(repid_get_in_memory_queue, repid_test_broker) -> None:
    mock_args = {"a": 1, "b": 1}
    later = datetime.now(tz=UTC) + timedelta(hours=1)
    await Job("add", args=mock_args, deferred_until=later).enqueue()
    queue = repid_get_in_memory_queue("default")
    assert [m.args for m in queue.delayed] == [mock_args]
    assert await repid_test_broker.run_pending(include_delayed=True) == 1
    assert len(queue) == 0


@pytest.mark.repid(routers=[router])
async def test_overdue_deferred_job_runs(repid_get_mocked_actor) -> None:
    mock = repid_get_mocked_actor("add")
    earlier = datetime.now(tz=UTC) - timedelta(minutes=1)
    await Job("add", args={"a": 1, "b": 1}, deferred_until=earlier).enqueue()
    mock.assert_awaited_once()


@pytest.mark.repid(routers=[router])
async def test_unknown_actor_stays_in_queue(repid_get_in_memory_queue) -> None:
    await Job("nobody", args={"x": 1}).enqueue()
    queue = repid_get_in_memory_queue("default")
    assert [(m.actor, m.args) for m in queue.ready] == [("nobody", {"x": 1})]
    assert queue.counts["dead"] == 0


@pytest.mark.repid(routers=[router])
async def test_other_queue_and_nested_enqueues(repid_get_mocked_actor) -> None:
    elsewhere_mock = repid_get_mocked_actor("elsewhere")
    add_mock = repid_get_mocked_actor("add")
    job = await Job("elsewhere", queue="other", args={"text": "hi"}).enqueue()
    elsewhere_mock.assert_awaited_once_with(text="hi")
    result = await job.result
    assert result is not None
    assert result.data == '"HI"'
    await Job("fan_out", args={"n": 3}).enqueue()
    assert [c.kwargs for c in add_mock.await_args_list] == [
        {"a": 0, "b": 0},
        {"a": 1, "b": 1},
        {"a": 2, "b": 2},
    ]


@pytest.mark.repid(routers=[router])
async def test_validation_error_is_dead_lettered(repid_get_in_memory_queue) -> None:
    await Job("add", args={"a": "not a number", "b": 1}).enqueue()
    dead = repid_get_in_memory_queue("default").dead
    assert dead[0].dead_letter is not None
    assert dead[0].dead_letter.reason == DeadLetterReason.VALIDATION_ERROR.value


@pytest.mark.repid(routers=[router])
async def test_unique_job_is_not_duplicated_while_pending(repid_get_in_memory_queue) -> None:
    for _ in range(2):
        await Job("nobody", id_="only-one").enqueue()
    assert repid_get_in_memory_queue("default").counts["ready"] == 1


@pytest.mark.repid(routers=[router], declare_all_known_queues=False)
async def test_queues_not_declared(repid_connection: Connection, repid_declare_all_known_queues):
    assert sorted(repid_declare_all_known_queues) == ["default", "other"]
    assert sorted(repid_connection.raw_message_broker.queue_names()) == ["default", "other"]


@pytest.mark.repid(routers=[router], declare_all_known_queues=False)
async def test_enqueue_into_undeclared_queue_raises() -> None:
    with pytest.raises(QueueNotDeclaredError):
        await Job("add", args={"a": 1, "b": 2}).enqueue()
    with pytest.raises(KeyError):
        await Job("add", args={"a": 1, "b": 2}).enqueue()


@pytest.mark.repid(routers=[router], autoconnection=False)
async def test_no_autoconnection(repid_app: Repid, repid_get_mocked_actor) -> None:
    with pytest.raises(ValueError, match=r"Default connection isn't set\."):
        Repid.get_magic_connection()
    assert not repid_app.connection.is_open
    mock = repid_get_mocked_actor("add")
    async with repid_app.magic():
        await Job("add", args={"a": 1, "b": 2}).enqueue()
    mock.assert_awaited_once_with(a=1, b=2)


def test_unmarked_test_has_no_default_connection() -> None:
    with pytest.raises(ValueError, match=r"Default connection isn't set\."):
        Repid.get_magic_connection()


@pytest.mark.repid(routers=[router])
def test_sync_test_with_marker(repid_connection: Connection) -> None:
    assert Repid.get_magic_connection() is repid_connection


@pytest.mark.repid(routers=[Worker(routers=[router], handle_signals=[])])
async def test_workers_are_accepted_as_routers(repid_get_mocked_actor) -> None:
    mock = repid_get_mocked_actor("add")
    await Job("add", args={"a": 2, "b": 2}).enqueue()
    mock.assert_awaited_once()


@pytest.mark.repid(routers=[router])
class TestClassMarker:
    async def test_inherits_marker(self, repid_connection: Connection) -> None:
        assert Repid.get_magic_connection() is repid_connection


async def test_environment_without_pytest_fixtures() -> None:
    env = RepidTestEnvironment([router])
    env.start()
    try:
        assert Repid.get_magic_connection() is env.connection
        add_mock = env.broker.mock_actor("add")
        await Job("add", args={"a": 1, "b": 1}).enqueue()
        add_mock.assert_awaited_once_with(a=1, b=1)
    finally:
        env.stop()
    with pytest.raises(ValueError, match=r"Default connection isn't set\."):
        Repid.get_magic_connection()


async def test_real_worker_still_works_with_the_test_broker() -> None:
    broker = TestMessageBroker([router], run_on_enqueue=False)
    connection = Connection(broker)
    app = Repid(connection)
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        assert broker.counts("default")["ready"] == 1
        worker = Worker(routers=[router], messages_limit=1, handle_signals=[])
        runner = await asyncio.wait_for(worker.run(), 5)
        assert runner.succeeded == 1


@pytest.mark.repid(routers=[router], declare_all_known_queues=False)
async def test_run_pending_skips_undeclared_queues(repid_test_broker: TestMessageBroker) -> None:
    await Queue("other").declare()
    assert await repid_test_broker.run_pending() == 0
    with pytest.raises(QueueNotDeclaredError):
        await repid_test_broker.run_pending("default")


@pytest.mark.repid(routers=[router])
async def test_enqueue_many_runs_each_message(repid_test_broker, repid_get_mocked_actor) -> None:
    mock = repid_get_mocked_actor("add")
    jobs = [Job("add", args={"a": i, "b": 1}) for i in range(3)] + [Job("nobody")]
    messages = [job._build(Repid.get_magic_connection()) for job in jobs]
    await Repid.get_magic_connection().message_broker.enqueue_many(messages)
    assert [c.kwargs for c in mock.await_args_list] == [{"a": i, "b": 1} for i in range(3)]
    assert repid_test_broker.counts("default")["ready"] == 1


@pytest.mark.repid(routers=[router])
async def test_ready_messages_left_behind_run_on_demand(
    repid_test_broker: TestMessageBroker, repid_get_mocked_actor
) -> None:
    mock = repid_get_mocked_actor("add")
    repid_test_broker.run_on_enqueue = False
    await Job("add", args={"a": 1, "b": 2}).enqueue()
    mock.assert_not_awaited()
    repid_test_broker.run_on_enqueue = True
    assert await repid_test_broker.run_pending("default") == 1
    mock.assert_awaited_once_with(a=1, b=2)
