"""Actors' toolbox: MessageDependency, Depends, middlewares, sync/process actors, concurrency."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from datetime import timedelta
from typing import Annotated, Any

from repid import Depends, MessageCategory, MessageDependency, Repid

from .support import (
    assert_empty,
    browse,
    job,
    make_worker,
    router_for,
    run_to_limit,
    running,
    wait,
    wait_until,
)


def pid_of_the_actor() -> int:
    """Module level so a process pool can pickle it."""
    return os.getpid()


# -- MessageDependency ------------------------------------------------------------------------


async def test_actor_acks_early_then_raises_and_the_ack_stands(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    callbacks: list[str] = []

    @router.actor
    async def early(message: MessageDependency) -> None:
        await message.ack()
        message.add_callback(lambda: callbacks.append("called"))
        raise RuntimeError("after the ack")

    await job(conn, "early", queue, retries=2).enqueue()
    # The 2.0 behaviour, opt-in: the actor goes on after settling (1.6 ends it: tests/compat).
    worker = make_worker(conn, router, messages_limit=1, settle_ends_actor=False)
    runner = await run_to_limit(worker)
    assert runner.retried == 0
    assert runner.dead_lettered == 0
    assert callbacks == ["called"]
    await assert_empty(queue)


async def test_actor_rejects_and_the_message_comes_back_without_an_attempt(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    seen: list[int] = []

    @router.actor
    async def picky(message: MessageDependency) -> None:
        seen.append(message.parameters.retries.actual_amount)
        if len(seen) == 1:
            await message.reject()

    await job(conn, "picky", queue, retries=1).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=2))
    assert seen == [0, 0]
    await assert_empty(queue)


async def test_actor_retries_itself_counting_an_attempt(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    seen: list[int] = []

    @router.actor
    async def again(message: MessageDependency) -> None:
        seen.append(message.parameters.attempt)
        if len(seen) == 1:
            await message.retry(timedelta(0))

    await job(conn, "again", queue, retries=1).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=2))
    assert seen == [1, 2]
    await assert_empty(queue)


async def test_actor_nacks_itself_into_the_dead_letters(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def hopeless(message: MessageDependency) -> None:
        await message.nack()

    await job(conn, "hopeless", queue, retries=2).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "manual"


async def test_actor_sets_its_result_through_the_message(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def answer(message: MessageDependency) -> int:
        message.set_result({"answer": 42})
        return 0

    answered = await job(conn, "answer", queue).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    result = await answered.result
    assert result is not None
    assert json.loads(result.data) == {"answer": 42}


# -- Depends ----------------------------------------------------------------------------------


# Dependencies live at module level: with `from __future__ import annotations` an actor's
# `Annotated[..., Depends(fn)]` is resolved from the module's globals.
DEPENDENCY_THREADS: list[int] = []


def sync_number() -> int:
    DEPENDENCY_THREADS.append(threading.get_ident())
    return 1


async def async_word() -> str:
    return "word"


async def nested(base: Annotated[int, Depends(sync_number)], message: MessageDependency) -> str:
    return f"{base + 10}:{message.key.topic}"


async def real_value() -> str:
    return "real"


OVERRIDABLE = Depends(real_value)


async def broken_dependency() -> int:
    raise LookupError("no such thing")


async def test_depends_sync_async_and_nested(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    DEPENDENCY_THREADS.clear()
    received: dict[str, Any] = {}

    @router.actor
    async def uses_deps(
        x: int,
        number: Annotated[int, Depends(sync_number)],
        word: Annotated[str, Depends(async_word)],
        combo: Annotated[str, Depends(nested)],
    ) -> None:
        received.update(x=x, number=number, word=word, combo=combo)

    await job(conn, "uses_deps", queue, args={"x": "3"}).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert received == {"x": 3, "number": 1, "word": "word", "combo": "11:uses_deps"}
    assert len(DEPENDENCY_THREADS) == 2  # once directly, once under `nested`
    assert threading.get_ident() not in DEPENDENCY_THREADS, "a sync dependency ran on the loop"


async def test_depends_override(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    received: list[str] = []

    @router.actor
    async def uses(value: Annotated[str, OVERRIDABLE]) -> None:
        received.append(value)

    OVERRIDABLE.override(lambda: "fake")
    try:
        await job(conn, "uses", queue).enqueue()
        await run_to_limit(make_worker(conn, router, messages_limit=1))
    finally:
        OVERRIDABLE.override(None)
    await job(conn, "uses", queue).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert received == ["fake", "real"]


async def test_failing_dependency_fails_the_attempt(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    ran: list[None] = []

    @router.actor
    async def needs(value: Annotated[int, Depends(broken_dependency)]) -> None:
        ran.append(None)

    await job(conn, "needs", queue).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert ran == []
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "exception"
    assert dead.dead_letter.error_type == "LookupError"


# -- middlewares ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def before_enqueue(self, key: Any) -> None:
        self.events.append(("before_enqueue", key.topic))

    async def after_enqueue(self, key: Any, result: Any) -> None:
        self.events.append(("after_enqueue", key.topic))

    def before_actor_run(self, actor: Any, kwargs: dict[str, Any]) -> None:
        self.events.append(("before_actor_run", (actor.name, kwargs)))

    async def after_actor_run(self, result: Any) -> None:
        self.events.append(("after_actor_run", result))

    def before_ack(self, key: Any) -> None:
        self.events.append(("before_ack", key.topic))

    def after_ack(self, key: Any, result: Any) -> None:
        self.events.append(("after_ack", result))


class Broken:
    def before_enqueue(self) -> None:
        raise RuntimeError("middleware bug")

    async def before_actor_run(self) -> None:
        raise RuntimeError("middleware bug")

    def after_actor_run(self, **kwargs: Any) -> None:
        raise RuntimeError("middleware bug")

    def after_ack(self) -> None:
        raise RuntimeError("middleware bug")


async def test_middleware_events_are_emitted_and_a_broken_one_is_ignored(conn, new_queue):
    recorder = Recorder()
    Repid(conn, middlewares=[Broken(), recorder])
    queue = await new_queue()
    router = router_for(queue)
    ran: list[int] = []

    @router.actor
    async def work(n: int) -> int:
        ran.append(n)
        return n * 2

    await job(conn, "work", queue, args={"n": 4}, store_result=False).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert ran == [4]
    assert recorder.events == [
        ("before_enqueue", "work"),
        ("after_enqueue", "work"),
        ("before_actor_run", ("work", {"n": 4})),
        ("after_actor_run", 8),
        ("before_ack", "work"),
        ("after_ack", True),
    ]
    await assert_empty(queue)


# -- how actors run ---------------------------------------------------------------------------


async def test_sync_actor_runs_in_a_thread(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    threads: list[int] = []

    @router.actor
    def blocking(n: int) -> int:
        threads.append(threading.get_ident())
        return n + 1

    bumped = await job(conn, "blocking", queue, args={"n": 1}).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1))
    assert len(threads) == 1
    assert threads[0] != threading.get_ident()
    result = await bumped.result
    assert result is not None
    assert json.loads(result.data) == 2


async def test_run_in_process_actor_runs_in_another_process(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    router.actor(run_in_process=True)(pid_of_the_actor)

    ran = await job(conn, "pid_of_the_actor", queue).enqueue()
    await run_to_limit(make_worker(conn, router, messages_limit=1), timeout=30.0)
    result = await ran.result
    assert result is not None
    assert result.success, result.exception
    pid = json.loads(result.data)
    assert isinstance(pid, int)
    assert pid != os.getpid()


async def test_tasks_limit_bounds_concurrency(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)
    limit, total = 3, 10
    running_now = 0
    peak = 0
    done = 0
    all_done = asyncio.Event()

    @router.actor
    async def busy() -> None:
        nonlocal running_now, peak, done
        running_now += 1
        peak = max(peak, running_now)
        await asyncio.sleep(0.05)  # the work: holds its slot for a while
        running_now -= 1
        done += 1
        if done == total:
            all_done.set()

    for _ in range(total):
        await job(conn, "busy", queue).enqueue()
    async with running(make_worker(conn, router, tasks_limit=limit)):
        await wait(all_done, "every job to finish")
    assert peak == limit


async def test_actors_of_several_queues_run_in_one_worker(conn, new_queue):
    first, second = await new_queue(), await new_queue()
    router_a, router_b = router_for(first), router_for(second)
    ran: list[str] = []

    @router_a.actor
    async def on_first() -> None:
        ran.append("first")

    @router_b.actor
    async def on_second() -> None:
        ran.append("second")

    await job(conn, "on_first", first).enqueue()
    await job(conn, "on_second", second).enqueue()
    async with running(make_worker(conn, router_a, router_b)):
        await wait_until(lambda: len(ran) == 2, "both queues to be served")
    assert sorted(ran) == ["first", "second"]
    await assert_empty(first)
    await assert_empty(second)
