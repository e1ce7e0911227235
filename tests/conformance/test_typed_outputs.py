"""Typed outputs (issue 17): a return value that does not fit `-> Out` fails the attempt with
reason `output_validation_error`; `job.wait(as_type=Out)` returns the model."""

from __future__ import annotations

from typing import Any

import pydantic
import pytest

from repid import MessageCategory
from repid.converter import PydanticConverter

from .support import browse, job, make_worker, router_for, run_to_limit


class Out(pydantic.BaseModel):
    total: int
    label: str


def no_backoff(retry_number: int = 1) -> int:
    return 0


async def test_a_return_value_that_fits_is_stored_and_wait_returns_the_model(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    async def summarise(a: int, b: int) -> Out:
        return Out(total=a + b, label="sum")

    summary = await job(conn, "summarise", queue, args={"a": 2, "b": 3}).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert (runner.succeeded, runner.failed) == (1, 0)
    assert await summary.wait(timeout=10, as_type=Out) == Out(total=5, label="sum")
    assert await summary.wait(timeout=10) == {"total": 5, "label": "sum"}


async def test_a_return_value_that_does_not_fit_is_an_output_validation_error(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue, retry_policy=no_backoff)
    runs: list[int] = []

    @router.actor
    async def wrong() -> Out:
        runs.append(1)
        bad: Any = {"total": "not a number"}
        return bad  # type: ignore[no-any-return]

    failing = await job(conn, "wrong", queue, retries=1).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=2))

    assert len(runs) == 2, "an output validation error is a failed attempt: retried"
    assert (runner.succeeded, runner.failed, runner.dead_lettered) == (0, 2, 1)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    info = dead.dead_letter
    assert info is not None
    assert info.reason == "output_validation_error"
    assert info.error_type == "OutputValidationError"
    assert info.attempts == 2
    with pytest.raises(Exception, match="does not fit its return type"):
        await failing.wait(timeout=10)


async def test_a_sync_actor_output_is_validated_too(conn, new_queue):
    queue = await new_queue()
    router = router_for(queue)

    @router.actor
    def count() -> int:
        return "many"  # type: ignore[return-value]

    await job(conn, "count", queue).enqueue()
    runner = await run_to_limit(make_worker(conn, router, messages_limit=1))

    assert (runner.succeeded, runner.failed) == (0, 1)
    (dead,) = await browse(queue, MessageCategory.DEAD)
    assert dead.dead_letter is not None
    assert dead.dead_letter.reason == "output_validation_error"


def test_one_output_validator_per_actor_none_for_unchecked_returns() -> None:
    async def typed() -> Out:
        return Out(total=1, label="x")

    async def untyped():  # type: ignore[no-untyped-def]
        return 1

    async def returns_none() -> None:
        return None

    converter = PydanticConverter(typed)
    first = converter._output
    assert first is not None
    converter.validate_output(Out(total=1, label="x"))
    assert converter._output is first, "compiled once, reused"
    assert not PydanticConverter(untyped).validates_output
    assert not PydanticConverter(returns_none).validates_output


class Plain:
    pass


def test_a_plain_class_return_type_is_an_isinstance_check() -> None:
    def make() -> Plain:
        return Plain()

    converter = PydanticConverter(make)
    assert isinstance(converter.validate_output(Plain()), Plain)
    with pytest.raises(ValueError, match="does not fit"):
        converter.validate_output(3)
