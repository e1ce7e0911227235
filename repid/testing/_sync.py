"""Drive a coroutine that never suspends to completion without an event loop."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run_now(coro: Coroutine[Any, Any, T]) -> T:
    """Return the result of `coro`, which must complete without suspending.

    The in-memory brokers' operations are coroutines only to satisfy the broker protocol: none of
    them awaits anything that suspends. Running them this way lets the pytest fixtures stay
    synchronous, so they work in any test (sync or async, any pytest-asyncio mode and loop scope).

    Raises:
        RuntimeError: the coroutine tried to suspend (it was closed, nothing else ran).
    """
    try:
        coro.send(None)
    except StopIteration as stop:
        result: T = stop.value
        return result
    coro.close()
    raise RuntimeError(
        "repid.testing: an in-memory operation suspended; run it with `await` inside the test"
    )
