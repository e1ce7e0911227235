"""Code written for repid 1.6 (issue 16): the app, `Job` and `Queue` rows, written as a 1.6 user's
tests were. Every test here failed before the compatibility work and passes now.
"""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from repid import (
    Config,
    Connection,
    GetEventLogT,
    GetInMemoryQueueT,
    GetMockedActorT,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    Queue,
    Repid,
    Router,
)

router = Router()


@router.actor
async def greet(name: str) -> str:
    return f"hello {name}"


class _ConfigReader(InMemoryMessageBroker):
    """A broker that, like 1.6's, reads `Config` when told to."""

    def __init__(self) -> None:
        super().__init__()
        self.config_reads = 0

    def update_from_config(self) -> None:
        self.config_reads += 1


@pytest.mark.parametrize(
    "connection",
    [
        Connection(InMemoryMessageBroker()),
        Connection(InMemoryMessageBroker(), args_bucket_broker=InMemoryBucketBroker()),
        Connection(
            InMemoryMessageBroker(),
            results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
        ),
    ],
)
def test_update_config_is_accepted(connection: Connection) -> None:
    Repid(connection, update_config=True)


def test_update_config_reapplies_config_to_the_brokers() -> None:
    broker = _ConfigReader()
    Repid(Connection(broker))
    assert broker.config_reads == 0
    Repid(Connection(broker), update_config=True)
    assert broker.config_reads == 1


def test_config_serializer_applies_to_jobs_created_afterwards(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(Config, "SERIALIZER", lambda data: '{"a":"replaced"}')
    Repid(Connection(InMemoryMessageBroker()), update_config=True)
    assert Job("greet", args={"a": 1}, _connection=Connection(InMemoryMessageBroker())).payload == (
        '{"a":"replaced"}'
    )


def test_no_magic() -> None:
    Repid.set_magic_connection(None)
    with pytest.raises(ValueError, match=r"Default connection isn't set\."):
        Repid.get_magic_connection()


@pytest.mark.repid(routers=[router])
async def test_fixture_types_import_from_repid(
    repid_get_event_log: GetEventLogT,
    repid_get_mocked_actor: GetMockedActorT,
    repid_get_in_memory_queue: GetInMemoryQueueT,
) -> None:
    actor = repid_get_mocked_actor("greet")
    await Job("greet", args={"name": "ann"}).enqueue()
    actor.assert_called_once_with(name="ann")
    assert len(repid_get_event_log("after_enqueue")) == 1
    assert repid_get_in_memory_queue("default") is not None


@pytest.mark.repid
@pytest.mark.parametrize("name", ["1abc", "-abc", "a b", "ab.c", ""])
def test_invalid_job_name(name: str) -> None:
    with pytest.raises(ValueError, match="Job name must"):
        Job(name)


@pytest.mark.repid
@pytest.mark.parametrize("name", ["1abc", "-abc", "a b", "ab.c", ""])
def test_invalid_queue_name(name: str) -> None:
    with pytest.raises(ValueError, match="Queue name must"):
        Queue(name)
    with pytest.raises(ValueError, match="Queue name must"):
        Job("greet", queue=name)


@pytest.mark.repid
@pytest.mark.parametrize("id_", ["a b", "a.b", "a:b", ""])
def test_invalid_ids(id_: str) -> None:
    with pytest.raises(ValueError, match="Job id must contain only"):
        Job("greet", id_=id_)
    with pytest.raises(ValueError, match="Result_id must contain only"):
        Job("greet", result_id=id_)


@pytest.mark.parametrize("name", ["1abc", "a b", "a.b"])
def test_invalid_actor_name(name: str) -> None:
    r = Router()
    with pytest.raises(ValueError, match="Actor name must"):
        r.actor(name=name)(greet)


@pytest.mark.repid
def test_durations_under_a_second() -> None:
    short = timedelta(milliseconds=500)
    with pytest.raises(ValueError, match="Execution timeout must be greater than or equal to 1"):
        Job("greet", timeout=short)
    with pytest.raises(ValueError, match="TTL must be greater than or equal to 1 second"):
        Job("greet", ttl=short)
    with pytest.raises(ValueError, match="Deferred_by must be greater than or equal to 1"):
        Job("greet", deferred_by=short)
    with pytest.raises(ValueError, match="Result_ttl must be greater than or equal to 1"):
        Job("greet", result_ttl=short)


@pytest.mark.repid
def test_cron_with_deferred_by() -> None:
    with pytest.raises(ValueError, match="Usage of 'cron' AND 'deferred_by' together"):
        Job("greet", cron="* * * * *", deferred_by=timedelta(minutes=1))


def test_queue_str() -> None:
    assert str(Queue()) == "Queue(default)"
    assert str(Queue("emails")) == "Queue(emails)"


@pytest.mark.repid
def test_is_overdue_counts_from_construction(monkeypatch: pytest.MonkeyPatch) -> None:
    j = Job("greet", ttl=timedelta(seconds=1))
    assert j.is_overdue is False
    constructed = time.time()
    # "a second after construction", without waiting for it
    monkeypatch.setattr("repid.job.time.time", lambda: constructed + 1.01)
    assert j.is_overdue is True
    assert Job("greet").is_overdue is False  # no ttl: never overdue
