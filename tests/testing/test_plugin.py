"""The pytest plugin seen from the outside: inner pytest sessions run with `pytester`.

The outer tests are synchronous on purpose: each inner session runs its own event loops.
"""

from __future__ import annotations

import textwrap

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestAssertRewriteWarning")

ROUTER = """
import pytest
from repid import Job, MessageCategory, Queue, Repid, Router

router = Router()


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor
def shout(text: str) -> str:
    return text.upper()


@router.actor
async def boom(reason: str) -> None:
    raise RuntimeError(reason)
"""


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Write `body` (after the shared router module) as a test file and run it."""
    pytester.makeini(
        """
        [pytest]
        addopts = --strict-markers -p no:cacheprovider -p no:hypothesispytest
        asyncio_mode = auto
        asyncio_default_fixture_loop_scope = function
        """
    )

    def run(body: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_inner=ROUTER + textwrap.dedent(body))
        return pytester.runpytest(*args)

    return run


def test_marker_is_registered(run, pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--markers")
    result.stdout.fnmatch_lines(["@pytest.mark.repid(routers=None, autoconnection=True*"])


def test_marker_gives_a_working_app(run) -> None:
    result = run(
        """
        from repid import Connection, InMemoryBucketBroker
        from repid.testing import TestMessageBroker

        @pytest.mark.repid(routers=[router])
        async def test_app(repid_app, repid_connection):
            assert isinstance(repid_app, Repid)
            assert repid_app.connection is repid_connection
            assert Repid.get_magic_connection() is repid_connection
            assert isinstance(repid_connection.raw_message_broker, TestMessageBroker)
            assert isinstance(repid_connection.raw_args_bucket_broker, InMemoryBucketBroker)
            assert repid_connection.raw_results_bucket_broker.use_result_bucket
            assert sorted(repid_connection.raw_message_broker.queue_names()) == ["default"]

        @pytest.mark.repid(routers=[router])
        async def test_needs_no_fixture():
            await Job("add", args={"a": 1, "b": 2}).enqueue()
        """
    )
    result.assert_outcomes(passed=2)


def test_enqueue_runs_actor_immediately_with_validated_args(run) -> None:
    result = run(
        """
        @pytest.mark.repid(routers=[router])
        async def test_enqueue():
            job = await Job("add", args={"a": "40", "b": 2}).enqueue()
            result = await job.result  # stored before enqueue returned
            assert result is not None and result.success
            assert result.data == "42"

        @pytest.mark.repid(routers=[router])
        async def test_sync_actor():
            job = await Job("shout", args={"text": "hi"}).enqueue()
            assert (await job.result).data == '"HI"'
        """
    )
    result.assert_outcomes(passed=2)


def test_mocked_actor_records_calls_with_converted_args(run) -> None:
    result = run(
        """
        from unittest.mock import AsyncMock, MagicMock

        @pytest.mark.repid(routers=[router])
        async def test_mock(repid_get_mocked_actor):
            add_mock = repid_get_mocked_actor("add")
            shout_mock = repid_get_mocked_actor("shout")
            assert isinstance(add_mock, AsyncMock)
            assert isinstance(shout_mock, MagicMock)
            job = await Job("add", args={"a": "1", "b": 2.0}).enqueue()
            add_mock.assert_awaited_once_with(a=1, b=2)
            assert (await job.result).data == "3"  # the real function ran
            await Job("shout", args={"text": "x"}).enqueue()
            shout_mock.assert_called_once_with(text="x")
        """
    )
    result.assert_outcomes(passed=1)


def test_event_log_shows_enqueue_actor_run_and_ack(run) -> None:
    result = run(
        """
        @pytest.mark.repid(routers=[router])
        async def test_log(repid_get_event_log):
            job = await Job("add", args={"a": 1, "b": 2}).enqueue()
            log = repid_get_event_log()
            events = [e.name for e in log if e.event in {"enqueue", "actor_run", "ack"}]
            assert events == [
                "before_enqueue",
                "before_actor_run",
                "after_actor_run",
                "before_ack",
                "after_ack",
                "after_enqueue",
            ]
            enqueue = repid_get_event_log("before_enqueue")[0]
            assert enqueue.arguments["key"].topic == "add"
            run = repid_get_event_log("after_actor_run")[0]
            assert run.arguments["kwargs"] == {"a": 1, "b": 2}
            assert run.result == 3
            assert repid_get_event_log("ack")[0].arguments["key"].key.topic == "add"
        """
    )
    result.assert_outcomes(passed=1)


def test_failing_actor_ends_dead(run) -> None:
    result = run(
        """
        @pytest.mark.repid(routers=[router])
        async def test_dead(repid_get_event_log):
            job = await Job("boom", args={"reason": "kaput"}).enqueue()
            dead_part = Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True)
            dead = [m async for m in dead_part]
            assert [m.key.topic for m in dead] == ["boom"]
            info = dead[0].parameters.dead_letter
            assert info.error_type == "RuntimeError" and info.error_message == "kaput"
            assert [e.name for e in repid_get_event_log("nack")] == ["before_nack", "after_nack"]
            assert not (await job.result).success

        @pytest.mark.repid(routers=[router])
        async def test_retries_are_delayed(repid_get_mocked_actor, repid_get_in_memory_queue):
            mock = repid_get_mocked_actor("boom")
            await Job("boom", args={"reason": "again"}, retries=3).enqueue()
            assert mock.await_count == 1  # the retry waits for its delay
            queue = repid_get_in_memory_queue("default")
            assert queue.counts["delayed"] == 1 and queue.counts["dead"] == 0
            assert queue.delayed[0].attempt == 2
        """
    )
    result.assert_outcomes(passed=2)


def test_queue_view(run) -> None:
    result = run(
        """
        from datetime import timedelta

        @pytest.mark.repid(routers=[router])
        async def test_view(repid_get_in_memory_queue):
            queue = repid_get_in_memory_queue(Queue("default"))
            assert queue.counts == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 0}
            await Job("unknown_actor", args={"x": 1}).enqueue()
            await Job("add", args={"a": 1, "b": 1}, deferred_by=timedelta(minutes=5)).enqueue()
            await Job("boom", args={"reason": "r"}).enqueue()
            await Job("add", args={"a": 1, "b": 1}).enqueue()  # runs and is acked: gone
            assert queue.counts == {"ready": 1, "delayed": 1, "in_flight": 0, "dead": 1}
            assert [(m.actor, m.args) for m in queue.ready] == [("unknown_actor", {"x": 1})]
            assert [(m.actor, m.args) for m in queue.delayed] == [("add", {"a": 1, "b": 1})]
            assert [m.dead_letter.reason for m in queue.dead] == ["exception"]
            assert len(queue) == 3

        @pytest.mark.repid(routers=[router])
        async def test_undeclared(repid_get_in_memory_queue):
            with pytest.raises(KeyError):
                repid_get_in_memory_queue("nope").counts
        """
    )
    result.assert_outcomes(passed=2)


def test_declare_all_known_queues_false_leaves_queues_undeclared(run) -> None:
    result = run(
        """
        @pytest.mark.repid(routers=[router], declare_all_known_queues=False)
        async def test_undeclared():
            with pytest.raises(KeyError, match="default"):
                await Job("add", args={"a": 1, "b": 2}).enqueue()

        @pytest.mark.repid(routers=[router], declare_all_known_queues=False)
        async def test_declare_fixture(repid_declare_all_known_queues, repid_get_mocked_actor):
            assert repid_declare_all_known_queues == ["default"]
            mock = repid_get_mocked_actor("add")
            await Job("add", args={"a": 1, "b": 2}).enqueue()
            mock.assert_awaited_once()
        """
    )
    result.assert_outcomes(passed=2)


def test_autoconnection_false_means_no_magic_connection(run) -> None:
    result = run(
        """
        @pytest.mark.repid(routers=[router], autoconnection=False)
        async def test_no_magic(repid_app, repid_get_mocked_actor):
            with pytest.raises(ValueError):
                Repid.get_magic_connection()
            with pytest.raises(ValueError):
                await Job("add", args={"a": 1, "b": 2}).enqueue()
            mock = repid_get_mocked_actor("add")
            async with repid_app.magic():
                await Job("add", args={"a": 1, "b": 2}).enqueue()
            mock.assert_awaited_once_with(a=1, b=2)
        """
    )
    result.assert_outcomes(passed=1)


def test_magic_connection_is_restored_after_each_test(run) -> None:
    result = run(
        """
        seen = []

        @pytest.mark.repid(routers=[router])
        async def test_first(repid_connection):
            seen.append(repid_connection)
            assert Repid.get_magic_connection() is repid_connection

        async def test_unmarked_after():
            with pytest.raises(ValueError):
                Repid.get_magic_connection()

        @pytest.mark.repid(routers=[router])
        async def test_second(repid_connection, repid_get_in_memory_queue):
            assert repid_connection is not seen[0]  # a fresh app per test
            assert Repid.get_magic_connection() is repid_connection
            assert len(repid_get_in_memory_queue("default")) == 0

        @pytest.mark.repid(routers=[router], autoconnection=False)
        async def test_user_magic_connect_is_undone(repid_app):
            await repid_app.magic_connect()

        def test_sync_unmarked_after():
            with pytest.raises(ValueError):
                Repid.get_magic_connection()
        """
    )
    result.assert_outcomes(passed=5)


def test_tests_not_using_the_plugin_are_unaffected(run) -> None:
    result = run(
        """
        from repid import Connection, InMemoryMessageBroker

        def test_plain():
            assert 1 + 1 == 2

        async def test_plain_async():
            app = Repid(Connection(InMemoryMessageBroker()))
            async with app.magic():
                await Queue().declare()
                await Job("add", args={"a": 1, "b": 2}).enqueue()  # no worker: stays queued
                assert app.connection.message_broker.counts("default")["ready"] == 1
        """
    )
    result.assert_outcomes(passed=2)


def test_works_without_pytest_asyncio(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_sync=ROUTER
        + textwrap.dedent(
            """
            @pytest.mark.repid(routers=[router])
            def test_sync(repid_connection, repid_get_in_memory_queue):
                assert Repid.get_magic_connection() is repid_connection
                assert repid_get_in_memory_queue("default").counts["ready"] == 0

            def test_plain():
                pass
            """
        )
    )
    result = pytester.runpytest(
        "-p",
        "no:asyncio",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:hypothesispytest",
        "--strict-markers",
    )
    result.assert_outcomes(passed=2)


def test_invalid_marker_arguments_are_reported(run) -> None:
    result = run(
        """
        @pytest.mark.repid(router=[router])
        def test_typo():
            pass

        @pytest.mark.repid(routers=["not a router"])
        def test_bad_router():
            pass
        """
    )
    result.assert_outcomes(errors=2)
    result.stdout.fnmatch_lines(
        ["*unexpected argument(s)*'router'*", "*expects Router or Worker objects, got str*"]
    )
