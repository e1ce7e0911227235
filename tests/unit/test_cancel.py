"""`repid._cancel.await_quietly`: a close's own CancelledError is swallowed, the caller's
cancellation never is (the shape of the bug fixed in 8f59693, found again in the audit)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from repid._cancel import await_quietly


async def _close_ending_cancelled() -> None:
    raise asyncio.CancelledError  # what aiormq does when closing on a dead connection


async def test_a_close_that_ends_cancelled_is_swallowed() -> None:
    await await_quietly(_close_ending_cancelled())


async def test_listed_errors_are_swallowed_others_raised() -> None:
    async def fails(exc: Exception) -> None:
        raise exc

    await await_quietly(fails(ConnectionError("gone")), ConnectionError)
    with pytest.raises(KeyError):
        await await_quietly(fails(KeyError("x")), ConnectionError)


async def test_a_task_cancelled_by_the_caller_is_awaited_quietly() -> None:
    task = asyncio.create_task(asyncio.Event().wait())
    await asyncio.sleep(0)  # let it start waiting
    task.cancel()
    await await_quietly(task)
    assert task.cancelled()


async def _cancel_while_closing(close_with_suppress: bool) -> asyncio.Task[None]:
    started = asyncio.Event()
    never = asyncio.Event()

    async def slow_close() -> None:
        started.set()
        await never.wait()  # a close that hangs (a dead peer)

    async def closer() -> None:
        if close_with_suppress:
            with contextlib.suppress(asyncio.CancelledError):
                await slow_close()
        else:
            await await_quietly(slow_close())
        never.set()  # reached only when the cancellation was swallowed

    task = asyncio.create_task(closer())
    await started.wait()
    task.cancel()
    await asyncio.wait((task,), timeout=5.0)
    assert task.done()
    return task


async def test_the_callers_cancellation_is_re_raised() -> None:
    task = await _cancel_while_closing(close_with_suppress=False)
    assert task.cancelled()


async def test_suppress_would_have_swallowed_it() -> None:
    """The control: the old `contextlib.suppress` shape lets a cancelled task run on."""
    task = await _cancel_while_closing(close_with_suppress=True)
    assert not task.cancelled()


async def test_wait_for_around_a_hanging_close_times_out() -> None:
    never = asyncio.Event()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(await_quietly(never.wait()), timeout=0.2)
