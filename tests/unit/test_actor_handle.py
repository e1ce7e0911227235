"""Typed handles on actors: `await fn.enqueue(...)` / `fn.send(...)` / `fn.job(...)`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from _worker_helpers import magic_app, running, wait_until

from repid import (
    Depends,
    Job,
    MessageDependency,
    PrioritiesT,
    Queue,
    Router,
    RouterDefaults,
    Worker,
)
from repid.handle import ActorHandle


def make_router() -> tuple[Router, Any]:
    router = Router(defaults=RouterDefaults(queue="jobs"))

    @router.actor(queue="orders")
    async def process_order(order_id: int, note: str = "") -> int:
        return order_id * 10

    return router, process_order


def test_the_decorator_still_returns_the_function_itself() -> None:
    router = Router()

    async def work(n: int) -> int:
        return n

    assert router.actor(work) is work
    assert router.actors["work"].fn is work
    assert work.handle is router.actors["work"].handle  # type: ignore[attr-defined]
    assert isinstance(work.handle, ActorHandle)  # type: ignore[attr-defined]


async def test_the_function_stays_callable() -> None:
    _, process_order = make_router()
    assert await process_order(3) == 30
    assert await process_order(order_id=4, note="x") == 40


async def test_enqueue_sends_to_the_actors_queue_with_bound_arguments() -> None:
    _, process_order = make_router()
    async with magic_app() as conn:
        await Queue("orders").declare()
        job = await process_order.enqueue(order_id=1)
        assert isinstance(job, Job)
        assert job.name == "process_order"
        assert job.queue.name == "orders"
        assert job.args == {"order_id": 1}
        assert job.last_id is not None
        sent = await process_order.send(2, note="n")
        assert sent.args == {"order_id": 2, "note": "n"}
        assert conn.message_broker.counts("orders")["ready"] == 2


async def test_a_worker_runs_what_a_handle_sent() -> None:
    async with magic_app():
        await Queue("orders").declare()
        worker = Worker(handle_signals=[])
        seen: list[tuple[int, str]] = []

        @worker.actor(queue="orders")
        async def process_order(order_id: int, note: str = "") -> None:
            seen.append((order_id, note))

        await process_order.enqueue(order_id=7, note="gift")
        async with running(worker):
            await wait_until(lambda: len(seen) == 1, what="the actor")
    assert seen == [(7, "gift")]


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((), {"orderid": 1}, "unexpected keyword argument 'orderid' (did you mean 'order_id'?)"),
        ((), {}, "missing a required argument: 'order_id'"),
        ((1, "a", "b"), {}, "too many positional arguments"),
        ((1,), {"order_id": 1}, "multiple values for argument 'order_id'"),
        ((), {"zzz": 1, "order_id": 1}, "unexpected keyword argument 'zzz'"),
    ],
)
async def test_a_call_that_does_not_fit_raises_type_error_and_sends_nothing(
    args: tuple[Any, ...], kwargs: dict[str, Any], message: str
) -> None:
    _, process_order = make_router()
    async with magic_app() as conn:
        await Queue("orders").declare()
        for method in (process_order.enqueue, process_order.send):
            with pytest.raises(TypeError) as info:
                await method(*args, **kwargs)
            assert str(info.value) == f"actor 'process_order': {message}"
        with pytest.raises(TypeError, match="actor 'process_order'"):
            process_order.job(*args, **kwargs)
        assert conn.message_broker.counts("orders")["ready"] == 0


async def test_options_set_job_parameters_and_keep_the_handle_unchanged() -> None:
    _, process_order = make_router()
    async with magic_app():
        await Queue("orders").declare()
        urgent = process_order.options(priority=PrioritiesT.HIGH, retries=3)
        job = await urgent.enqueue(order_id=1)
        assert job.priority is PrioritiesT.HIGH
        assert job.retries == 3
        assert job.queue.name == "orders"
        again = urgent.options(deferred_by=timedelta(seconds=60)).job(order_id=2)
        assert again.retries == 3
        assert again.deferred_by == timedelta(seconds=60)
        assert process_order.job(order_id=3).priority is PrioritiesT.MEDIUM


def test_options_that_belong_to_the_handle_or_do_not_exist_are_refused() -> None:
    _, process_order = make_router()
    with pytest.raises(TypeError, match="queue cannot be set on a handle"):
        process_order.options(queue="elsewhere")
    with pytest.raises(TypeError, match=r"job options: .*'retriez'"):
        process_order.options(retriez=1).job(order_id=1)


def test_injected_parameters_are_not_part_of_the_call() -> None:
    router = Router()

    def settings() -> str:
        return "s"

    @router.actor
    async def with_deps(
        n: int, message: MessageDependency, config: str = Depends(settings)
    ) -> None:
        pass

    assert with_deps.job(n=1).args == {"n": 1}  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="unexpected keyword argument 'message'"):
        with_deps.job(n=1, message=None)  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match="missing a required argument: 'n'"):
        with_deps.job()  # type: ignore[attr-defined]


def test_var_keyword_actors_take_any_keyword_and_var_positional_values_are_refused() -> None:
    router = Router()

    @router.actor
    async def loose(a: int, **rest: Any) -> None:
        pass

    @router.actor
    async def spread(*values: int) -> None:
        pass

    assert loose.job(1, b=2, c=3).args == {"a": 1, "b": 2, "c": 3}  # type: ignore[attr-defined]
    assert spread.job().args is None  # type: ignore[attr-defined]
    with pytest.raises(TypeError, match=r"values for \*values cannot be named"):
        spread.job(1, 2)  # type: ignore[attr-defined]


def test_a_callable_without_attributes_is_registered_and_has_a_handle() -> None:
    class Service:
        async def run(self, n: int) -> None:
            pass

    router = Router()
    method = Service().run
    assert router.actor(method, name="run") is method
    assert not hasattr(method, "enqueue")
    assert router.actors["run"].handle.job(n=1).args == {"n": 1}


def test_an_attribute_of_the_function_own_is_not_overwritten() -> None:
    async def work(n: int) -> None:
        pass

    marker = object()
    work.send = marker  # type: ignore[attr-defined]
    Router().actor(work)
    assert work.send is marker  # type: ignore[attr-defined]
    assert work.job(n=1).name == "work"  # type: ignore[attr-defined]


def test_registering_again_rebinds_the_handle_to_the_latest_registration() -> None:
    async def work(n: int) -> None:
        pass

    Router().actor(queue="first")(work)
    assert work.job(n=1).queue.name == "first"  # type: ignore[attr-defined]
    Router().actor(queue="second")(work)
    assert work.job(n=1).queue.name == "second"  # type: ignore[attr-defined]
