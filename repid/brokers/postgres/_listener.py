"""LISTEN/NOTIFY wake-ups of the PostgreSQL broker: one connection per broker listens on the
broker's channel and wakes the consumers of the queue named in each notification.

Notifications only shorten waits: a consumer also polls (every `poll_interval` seconds), so a
lost notification or a dropped listening connection delays a message, never loses it.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any

import asyncpg

from repid._cancel import await_quietly
from repid.brokers.postgres._link import Link

__all__ = ["Listener"]

logger = logging.getLogger("repid.brokers.postgres")


def _resolve(fut: asyncio.Future[None], *_: object) -> None:
    if not fut.done():
        fut.set_result(None)


class Listener:
    """Keeps one LISTEN connection open (reopened with backoff) while the broker is connected."""

    def __init__(
        self,
        link: Link,
        channel: str,
        wake: Callable[[str], None],
        session_query: str,
        on_session: Callable[[tuple[int, Any]], None],
    ) -> None:
        self._link = link
        self._channel = channel
        self._wake = wake
        self._session_query = session_query
        self._on_session = on_session
        self.session: tuple[int, Any] | None = None
        """(backend pid, backend start) of the open LISTEN connection: this process's
        liveness in the worker registry (PostgreSQL ends it when the process dies)."""
        self._task: asyncio.Task[None] | None = None
        self._conn: asyncpg.Connection | None = None
        self.listening = asyncio.Event()

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=f"repid-postgres-{self._channel}")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await await_quietly(task, Exception)
        await self._close()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        self.listening.clear()
        self.session = None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 2.0)
            except Exception:
                conn.terminate()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self._wake(payload)

    async def _run(self) -> None:
        backoff = max(self._link.policy.reconnect_backoff, 0.05)
        while True:
            lost: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            try:
                conn = self._conn = await self._link.connect_once()
                conn.add_termination_listener(functools.partial(_resolve, lost))
                await conn.add_listener(self._channel, self._on_notify)
                row = await conn.fetchrow(self._session_query)
                if row is not None:
                    self.session = (row[0], row[1])
                    self._on_session(self.session)
                self.listening.set()
                backoff = max(self._link.policy.reconnect_backoff, 0.05)
                self._wake("")  # messages may have arrived while nobody listened
                await lost
                logger.warning("the LISTEN connection to PostgreSQL closed; reopening it")
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning(
                    "LISTEN on PostgreSQL failed (%s); retrying in %.2fs",
                    type(exc).__name__,
                    backoff,
                )
            await self._close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
