"""Awaiting a close or a cancelled task without swallowing the caller's own cancellation
(`contextlib.suppress(CancelledError)` around such an await would)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

__all__ = ["await_quietly"]


async def await_quietly(closing: Awaitable[Any], *errors: type[BaseException]) -> None:
    """Await `closing`, ignoring `errors` and a `CancelledError` that `closing` itself ends with.

    A cancellation of the calling task is re-raised: a close (aiormq ends one on a dead
    connection with `CancelledError`) or a task just cancelled by the caller may end that way,
    but the caller being cancelled while it waits must still stop it.
    """
    try:
        await closing
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise
    except errors:
        pass
