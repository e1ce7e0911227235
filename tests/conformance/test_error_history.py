"""The error history (issue 17): each failed attempt's error (time, type, message, traceback,
worker) travels with the message from retry to retry, so the dead letter and the failed result
list the last N attempts; N is set per worker and per actor, and bounded in bytes."""

from __future__ import annotations

import pytest

from repid import JobFailedError, MessageCategory
from repid.failures import decode_errors

from .support import browse, job, make_worker, router_for, run_to_limit


def no_backoff(retry_number: int = 1) -> int:
    return 0


async def test_a_dead_letter_and_the_failed_result_keep_every_attempts_error(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)

    @router.actor
    async def flaky(n: int) -> None:
        raise RuntimeError(f"attempt failed, n={n}")

    sent = await job(conn, "flaky", queue, args={"n": 7}, retries=2, store_result=True).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=3))
    assert (runner.retried, runner.dead_lettered) == (2, 1)

    (dead,) = await browse(queue, MessageCategory.DEAD)
    info = dead.dead_letter
    assert info is not None
    assert [e.attempt for e in info.errors] == [1, 2, 3]
    for entry in info.errors:
        assert entry.type == "RuntimeError"
        assert entry.message == "attempt failed, n=7"
        assert entry.traceback is not None
        assert "attempt failed" in entry.traceback
        assert entry.worker == runner.worker_id
        assert entry.at > 0
    assert [e.at for e in info.errors] == sorted(e.at for e in info.errors)
    assert dead.parameters.errors == (), "the history is kept once, in the dead-letter info"
    await dead.ack()

    with pytest.raises(JobFailedError) as failed:
        await sent.wait(timeout=10)
    assert [e.attempt for e in failed.value.errors] == [1, 2, 3]
    result = await sent.result
    assert result is not None
    assert not result.success
    assert [e.message for e in result.errors] == ["attempt failed, n=7"] * 3


async def test_an_actors_error_history_caps_the_workers(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)

    @router.actor(error_history=2)
    async def keeps_two() -> None:
        raise ValueError("x" * 40_000)

    await job(conn, "keeps_two", queue, retries=3).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=4, error_bytes=4_096))
    (dead,) = await browse(queue, MessageCategory.DEAD)
    info = dead.dead_letter
    assert info is not None
    assert [e.attempt for e in info.errors] == [3, 4], "the actor's 2 win over the worker's 5"
    size = sum(len((e.message or "") + (e.traceback or "")) for e in info.errors)
    assert size <= 4_096, "bounded by Worker(error_bytes=...)"
    assert all("…" in (e.message or "") for e in info.errors), "cut in the middle"
    await dead.ack()


async def test_error_history_zero_keeps_none_and_refused_input_keeps_its_reason(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)

    @router.actor
    async def fails() -> None:
        raise RuntimeError("nope")

    @router.actor
    async def takes_int(n: int) -> None:
        return None

    await job(conn, "fails", queue, retries=1).enqueue()
    await job(conn, "takes_int", queue, args={"n": "not a number"}).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=3, error_history=0))
    dead = {m.key.topic: m for m in await browse(queue, MessageCategory.DEAD)}
    assert dead["fails"].dead_letter is not None
    assert dead["fails"].dead_letter.errors == ()
    assert dead["fails"].dead_letter.error_message == "nope", "the last error is still kept"
    for message in dead.values():
        await message.ack()

    await job(conn, "takes_int", queue, args={"n": "still not"}).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1))
    (refused,) = await browse(queue, MessageCategory.DEAD)
    assert refused.dead_letter is not None
    assert refused.dead_letter.reason == "validation_error"
    (entry,) = refused.dead_letter.errors
    assert entry.attempt == 1
    assert entry.worker == runner.worker_id
    await refused.ack()


def test_the_wire_form_round_trips_and_refuses_a_foreign_shape() -> None:
    from repid.data import Parameters
    from repid.failures import ErrorEntry

    entry = ErrorEntry(1.5, 2, "KeyError", "'k'", "Traceback ...", "host:1:ab")
    params = Parameters(errors=(entry,))
    assert Parameters.decode(params.encode()).errors == (entry,)
    assert "e" not in Parameters().encode(), "no history costs nothing on the wire"
    with pytest.raises(TypeError):
        decode_errors({"not": "a list"})
