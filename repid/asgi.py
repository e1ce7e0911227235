"""A home for repid in ASGI apps (FastAPI, Starlette): a lifespan that connects a `Connection`
or `Repid` app at start-up and disconnects it at shutdown, and a dependency for handlers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, cast

from starlette.requests import Request

from repid.connection import Connection
from repid.errors import ConfigurationError
from repid.main import Repid

__all__ = ["STATE_KEY", "connection_from", "repid_lifespan"]

STATE_KEY = "repid_connection"
"""The key of the connection in the ASGI lifespan state (`request.state.repid_connection`)."""


def repid_lifespan(
    target: Connection | Repid,
    *,
    default: bool = True,
    then: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
) -> Callable[[Any], AbstractAsyncContextManager[dict[str, Any]]]:
    """A lifespan for `FastAPI(lifespan=...)` / `Starlette(lifespan=...)`.

    At start-up it connects `target` (and makes it the default connection of `Job`, `Queue`
    and `actor.enqueue()` when `default`); at shutdown it disconnects it. The connection is in
    the lifespan state and on `app.state` under `STATE_KEY`, which `connection_from(request)`
    reads.

    Args:
        target: the connection, or a `Repid` app (its connection is used).
        default: make it the process's default (`Repid.set_magic_connection`) while the app runs.
        then: another lifespan of the app, entered inside this one (its state is merged).
    """
    connection = target.connection if isinstance(target, Repid) else target

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[dict[str, Any]]:
        await connection.connect()
        previous = Repid._magic_connection
        if default:
            Repid.set_magic_connection(connection)
        app_state = getattr(app, "state", None)
        if app_state is not None:  # for servers and test transports without lifespan state
            setattr(app_state, STATE_KEY, connection)
        try:
            state: dict[str, Any] = {STATE_KEY: connection}
            if then is None:
                yield state
            else:
                async with then(app) as inner:
                    yield {**(inner or {}), **state}
        finally:
            if default and Repid._magic_connection is connection:
                Repid.set_magic_connection(previous)
            await connection.disconnect()

    return lifespan


def connection_from(request: Request) -> Connection:
    """The connection `repid_lifespan` opened, for a handler: `Depends(connection_from)`.

    Args:
        request: the Starlette/FastAPI `Request`.

    Raises:
        ConfigurationError: the app does not run under `repid_lifespan`.
    """
    connection = getattr(request.state, STATE_KEY, None)
    if connection is None:
        connection = getattr(request.app.state, STATE_KEY, None)
    if connection is None:
        raise ConfigurationError(
            "no repid connection: create the app with lifespan=repid_lifespan(...)"
        )
    return cast(Connection, connection)
