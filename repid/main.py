"""`Repid`: the application object that owns a connection and its middlewares."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from typing import Any, ClassVar

from repid.connection import Connection
from repid.lifecycle import EventHandler
from repid.middlewares import MiddlewareDispatcher

__all__ = ["Repid"]


class Repid:
    """An application: a `Connection` and the middlewares that observe it.

    `async with app.magic():` connects and makes the connection the default of every `Job`,
    `Queue` and `Worker` created without an explicit one, in every task of the process.
    """

    _magic_connection: ClassVar[Connection | None] = None

    def __init__(
        self,
        connection: Connection,
        *,
        middlewares: Iterable[Any] | None = None,
        event_handlers: Iterable[EventHandler] | None = None,
        update_config: bool = False,
    ) -> None:
        """Create the app.

        Args:
            connection: the brokers this app talks to.
            middlewares: objects with `before_<event>`/`after_<event>` methods.
            event_handlers: job lifecycle handlers (see `Connection.on_event`).
            update_config: re-read `Config` and apply it to the connection's brokers (repid
                1.6): every broker (and bucket broker) that has an `update_from_config()`
                method is told to re-read it. `Config.SERIALIZER` itself is read by each `Job`
                when it serialises its arguments, so changing it needs no update.
        """
        self.connection = connection
        self.middlewares = list(middlewares or [])
        for handler in event_handlers or ():
            connection.on_event(handler)
        if self.middlewares:
            connection.use_middlewares(MiddlewareDispatcher(self.middlewares))
        if update_config:
            connection.update_from_config()

    @classmethod
    def get_magic_connection(cls) -> Connection:
        """The default connection; `ValueError` when none is set."""
        if cls._magic_connection is None:
            raise ValueError(
                "Default connection isn't set. Use `async with app.magic():` "
                "or pass a connection explicitly."
            )
        return cls._magic_connection

    @classmethod
    def set_magic_connection(cls, connection: Connection | None) -> None:
        cls._magic_connection = connection

    async def magic_connect(self) -> Connection:
        """Connect and make this app's connection the default."""
        await self.connection.connect()
        Repid._magic_connection = self.connection
        return self.connection

    async def magic_disconnect(self) -> None:
        """Disconnect and clear the default connection if it is this app's."""
        await self.connection.disconnect()
        if Repid._magic_connection is self.connection:
            Repid._magic_connection = None

    @asynccontextmanager
    async def magic(self, auto_disconnect: bool = False) -> AsyncIterator[Connection]:
        """Connect (if needed) and make the connection the default inside the block.

        Args:
            auto_disconnect: disconnect when the block ends.
        """
        previous = Repid._magic_connection
        await self.connection.connect()
        Repid._magic_connection = self.connection
        try:
            yield self.connection
        finally:
            if auto_disconnect:
                await self.connection.disconnect()
            Repid._magic_connection = previous
