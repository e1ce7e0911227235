"""The PostgreSQL broker's connections: an asyncpg pool, retries with backoff while the server
is unreachable, and the translation of asyncpg's errors into repid's (passwords masked)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from repid._redact import mask_url, mask_urls
from repid.brokers.base import ConnectionPolicy
from repid.errors import BrokerAuthenticationError, BrokerUnavailableError, RepidError

__all__ = ["UNREACHABLE", "Link", "is_unreachable"]

logger = logging.getLogger("repid.brokers.postgres")

_T = TypeVar("_T")

UNREACHABLE: tuple[type[BaseException], ...] = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
)
"""Errors that mean the server is (for now) out of reach: the operation is retried."""


def is_unreachable(exc: BaseException) -> bool:
    return isinstance(exc, UNREACHABLE) and not isinstance(exc, asyncpg.InterfaceWarning)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Pool release without `RESET ALL` & co: the broker's statements change no session state,
    and the default reset costs a round trip per operation. (asyncpg still rolls back an
    unfinished transaction first.)"""


class Link:
    """A pool of connections to one PostgreSQL server, opened lazily and reopened on failure.

    Args:
        dsn: the `postgresql://` URL (its password is never logged nor put in an error).
        policy: connect and operation timeouts, reconnect backoff.
        pool_size: connections of the pool, all opened with it.
        server_settings: session settings of the pool's connections.
        warm_up: statements (with arguments that change nothing) run on each new connection.
    """

    def __init__(
        self,
        dsn: str,
        policy: ConnectionPolicy,
        pool_size: int,
        server_settings: dict[str, str] | None = None,
        warm_up: Sequence[tuple[str, tuple[Any, ...]]] = (),
    ) -> None:
        self.dsn = dsn
        self.warm_up = warm_up
        self.server_settings = server_settings
        self.masked_dsn = mask_url(dsn)
        self.policy = policy
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._opening: asyncio.Lock | None = None

    def _unavailable(self, what: str, exc: BaseException) -> BrokerUnavailableError:
        text = mask_urls(str(exc)) or type(exc).__name__
        if isinstance(exc, asyncpg.InvalidAuthorizationSpecificationError):
            # Wrong password, unknown role, pg_hba refusal: one sentence, no password.
            return BrokerAuthenticationError(
                f"PostgreSQL at {self.masked_dsn} refused the login: {text}"
            )
        return BrokerUnavailableError(
            f"PostgreSQL at {self.masked_dsn} is unreachable ({what}): {type(exc).__name__}: {text}"
        )

    async def pool(self) -> asyncpg.Pool:
        """The pool, created on first use (raises `BrokerUnavailableError`)."""
        if self._pool is not None:
            return self._pool
        if self._opening is None:
            self._opening = asyncio.Lock()
        async with self._opening:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self.dsn,
                        min_size=self.pool_size,
                        max_size=self.pool_size,
                        timeout=self.policy.connect_timeout,
                        command_timeout=self.policy.operation_timeout,
                        reset=_keep_session,
                        server_settings=self.server_settings,
                        init=self._warm_up if self.warm_up else None,
                    )
                except Exception as exc:
                    if isinstance(exc, RepidError):
                        raise
                    raise self._unavailable("connect", exc) from None
        return self._pool

    async def _warm_up(self, conn: asyncpg.Connection) -> None:
        """Prepare the hot statements on a new connection (each run with arguments that match
        no row), so that the first claims and acks do not pay for parsing and planning."""
        for query, args in self.warm_up:
            await conn.execute(query, *args)

    async def connect_once(self) -> asyncpg.Connection:
        """One connection outside the pool (the LISTEN connection, the schema upgrade)."""
        try:
            conn: asyncpg.Connection = await asyncpg.connect(
                self.dsn, timeout=self.policy.connect_timeout
            )
        except Exception as exc:
            raise self._unavailable("connect", exc) from None
        return conn

    async def run(self, what: str, operation: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run `operation` on a pooled connection, retrying with backoff while the server is
        unreachable, for up to `operation_timeout` seconds. `operation` must be safe to repeat.
        """
        policy = self.policy

        async def attempt() -> _T:
            pool = await self.pool()
            async with pool.acquire(timeout=policy.operation_timeout) as conn:
                return await operation(conn)

        def give_up(exc: Exception) -> BaseException:
            return exc if isinstance(exc, BrokerUnavailableError) else self._unavailable(what, exc)

        def on_retry(exc: Exception, pause: float) -> None:
            logger.warning("%s failed (%s); retrying in %.2fs", what, type(exc).__name__, pause)

        return await policy.retry(attempt, retryable=_retryable, give_up=give_up, on_retry=on_retry)

    async def once(self, operation: Callable[[asyncpg.Connection], Awaitable[_T]]) -> _T:
        """Run `operation` once on a pooled connection (errors mapped, no retry)."""
        try:
            pool = await self.pool()
            async with pool.acquire(timeout=self.policy.operation_timeout) as conn:
                return await operation(conn)
        except Exception as exc:
            if is_unreachable(exc) and not isinstance(exc, RepidError):
                raise self._unavailable("query", exc) from None
            raise

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), self.policy.operation_timeout)
            except Exception:  # a dead server: drop the connections
                pool.terminate()


def _retryable(exc: Exception) -> bool:
    return isinstance(exc, BrokerUnavailableError) or (
        is_unreachable(exc) and not isinstance(exc, RepidError)
    )
