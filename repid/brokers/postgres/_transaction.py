"""Enqueue inside the caller's own transaction: a context variable holding the caller's asyncpg
connection, which the broker (and the bucket broker) write on instead of their pool."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

__all__ = ["Transaction", "current_connection"]

_CALLER: ContextVar[Any] = ContextVar("repid_postgres_caller_connection", default=None)


def current_connection() -> Any:
    """The caller's asyncpg connection of the enclosing `transaction()` block, or None."""
    return _CALLER.get()


class Transaction:
    """`with broker.transaction(conn):` (or `async with`): writes go to `conn`.

    The block does not open a transaction itself: it joins the one the caller opened on `conn`
    (`async with conn.transaction():`), so a rollback removes the jobs with the caller's rows.
    Outside a transaction each statement commits on its own, as any statement on `conn` does.
    """

    __slots__ = ("_conn", "_tokens")

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._tokens: list[Token[Any]] = []

    def __enter__(self) -> Any:
        self._tokens.append(_CALLER.set(self._conn))
        return self._conn

    def __exit__(self, *exc: object) -> None:
        _CALLER.reset(self._tokens.pop())

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(self, *exc: object) -> None:
        self.__exit__()
