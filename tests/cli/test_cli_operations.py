"""The operator functions behind `repid queues`, `repid dead ...` and `repid enqueue`."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest

from repid import Connection, InMemoryMessageBroker, Queue, Router
from repid.cli.operations import (
    DeadFilter,
    Progress,
    enqueue,
    list_dead,
    parse_args_json,
    purge_dead,
    queue_sizes,
    requeue_dead,
)
from repid.cli.target import CLIError
from repid.data import PrioritiesT


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
async def connection() -> Connection:
    conn = Connection(InMemoryMessageBroker())
    await conn.connect()
    await Queue("jobs", _connection=conn).declare()
    return conn


async def make_dead(connection: Connection, count: int) -> None:
    for n in range(count):
        await enqueue(connection, "work", {"n": n}, queue="jobs")
    async for message in Queue("jobs", _connection=connection).get_messages(stop_when_empty=True):
        await message.nack("manual")


async def test_queue_sizes_reports_each_part_and_undeclared_queues(connection) -> None:
    await enqueue(connection, "work", {}, queue="jobs")
    await enqueue(connection, "work", {}, queue="jobs", delay=60)
    sizes = {s.name: s for s in await queue_sizes(connection, ["jobs", "missing"])}
    assert sizes["jobs"].declared
    assert (sizes["jobs"].ready, sizes["jobs"].delayed, sizes["jobs"].dead) == (1, 1, 0)
    assert not sizes["missing"].declared


async def test_queue_sizes_needs_a_broker_that_counts() -> None:
    silent = InMemoryMessageBroker()  # a broker that declares no `inspection`
    silent.capabilities = dataclasses.replace(silent.capabilities, inspection=False)
    with pytest.raises(CLIError, match="cannot report queue sizes"):
        await queue_sizes(Connection(silent))


async def test_list_dead_leaves_messages_in_place(connection) -> None:
    await make_dead(connection, 3)
    letters = await list_dead(connection, "jobs")
    assert [(d.actor, d.reason) for d in letters] == [("work", "manual")] * 3
    assert len(await list_dead(connection, "jobs", limit=2)) == 2
    assert connection.message_broker.counts("jobs")["dead"] == 3


async def test_requeue_dead_sends_them_back_with_a_live_counter(connection) -> None:
    await make_dead(connection, 3)
    terminal = FakeTerminal()
    assert await requeue_dead(connection, "jobs", terminal) == 3
    counts = connection.message_broker.counts("jobs")
    assert (counts["ready"], counts["dead"]) == (3, 0)
    assert terminal.getvalue().endswith("\rrequeued (jobs): 3/3\n")


async def test_purge_dead_deletes_them_and_is_quiet_off_a_terminal(connection) -> None:
    await make_dead(connection, 2)
    stream = io.StringIO()
    assert await purge_dead(connection, "jobs", stream) == 2
    assert connection.message_broker.counts("jobs")["dead"] == 0
    assert stream.getvalue() == ""


def test_progress_shows_count_without_total() -> None:
    terminal = FakeTerminal()
    progress = Progress("done", None, terminal)
    progress.advance()
    progress.close()
    assert terminal.getvalue() == "\rdone: 1\rdone: 1\n"


async def test_enqueue_validates_against_a_known_actor(connection) -> None:
    router = Router()

    @router.actor(queue="jobs")
    async def add(a: int, b: int) -> int:
        return a + b

    message_id = await enqueue(
        connection, "add", {"a": 1, "b": 2}, priority=PrioritiesT.HIGH, actors=router.actors
    )
    messages = [
        m async for m in Queue("jobs", _connection=connection).get_messages(stop_when_empty=True)
    ]
    assert [(m.key.id_, m.key.topic, m.key.priority) for m in messages] == [
        (message_id, "add", PrioritiesT.HIGH)
    ]
    with pytest.raises(CLIError, match="arguments do not fit actor 'add'"):
        await enqueue(connection, "add", {"a": "x"}, actors=router.actors)


@pytest.mark.parametrize(
    ("text", "error"),
    [("{", "not valid JSON"), ("[1]", "must be a JSON object"), ('"x"', "must be a JSON object")],
)
def test_parse_args_json_rejects_non_objects(text: str, error: str) -> None:
    with pytest.raises(CLIError, match=error):
        parse_args_json(text)


def test_parse_args_json_accepts_an_object() -> None:
    assert parse_args_json(json.dumps({"x": [1, 2]})) == {"x": [1, 2]}


async def make_mixed_dead(connection: Connection) -> list[str]:
    """Five dead letters: work n=0..2 (manual, exception, manual), other n=3..4 (timeout)."""
    ids = [
        await enqueue(connection, "work" if n < 3 else "other", {"n": n}, queue="jobs")
        for n in range(5)
    ]
    reasons = ["manual", "exception", "manual", "timeout", "timeout"]
    async for message in Queue("jobs", _connection=connection).get_messages(stop_when_empty=True):
        await message.nack(reasons[ids.index(message.key.id_)])
    return ids


async def test_dead_filters_select_by_id_reason_actor_and_limit(connection) -> None:
    ids = await make_mixed_dead(connection)
    by_id = await list_dead(connection, "jobs", which=DeadFilter(ids=frozenset(ids[1:3])))
    assert sorted(d.id_ for d in by_id) == sorted(ids[1:3])
    manual = await list_dead(connection, "jobs", which=DeadFilter(reason="manual"))
    assert sorted(d.id_ for d in manual) == sorted([ids[0], ids[2]])
    other = await list_dead(connection, "jobs", which=DeadFilter(actor="other"))
    assert {d.actor for d in other} == {"other"}
    assert len(other) == 2
    both = DeadFilter(reason="timeout", actor="work")
    assert await list_dead(connection, "jobs", which=both) == []
    assert len(await list_dead(connection, "jobs", which=DeadFilter(limit=4))) == 4


async def test_requeue_and_purge_touch_only_the_selected_dead_letters(connection) -> None:
    ids = await make_mixed_dead(connection)
    terminal = FakeTerminal()
    which = DeadFilter(ids=frozenset([ids[0], ids[4], "not-a-dead-id"]))
    assert await requeue_dead(connection, "jobs", terminal, which) == 2
    assert terminal.getvalue().endswith("\rrequeued (jobs): 2/3\n")  # total: the ids asked for
    counts = connection.message_broker.counts("jobs")
    assert (counts["ready"], counts["dead"]) == (2, 3)
    assert await purge_dead(connection, "jobs", io.StringIO(), DeadFilter(reason="manual")) == 1
    assert [d.id_ for d in await list_dead(connection, "jobs")] in (
        [ids[1], ids[3]],
        [ids[3], ids[1]],
    )
    assert await purge_dead(connection, "jobs", io.StringIO(), DeadFilter(limit=1)) == 1
    assert connection.message_broker.counts("jobs")["dead"] == 1
