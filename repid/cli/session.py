"""A command's connection: resolved from its options or its target, opened, closed at the end."""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from types import ModuleType

from repid.cli.target import (
    Target,
    connection_from_url,
    load_app,
    module_app,
    resolve_connection,
    resolve_target,
)
from repid.connection import Connection
from repid.main import Repid
from repid.router import ActorData, Router

__all__ = [
    "actors_of",
    "close_opened",
    "connect",
    "explicit_connection",
    "open_connection",
    "open_explicit",
]

_OPENED: list[Connection] = []
"""Connections a one-shot command opened; closed when it ends (see `close_opened`)."""


def explicit_connection(args: argparse.Namespace) -> Connection | None:
    """The connection `--app` or `--broker` names, if any (not yet connected)."""
    if getattr(args, "app", None):
        return load_app(args.app).connection
    if getattr(args, "broker", None):
        return connection_from_url(
            args.broker, getattr(args, "results", None), getattr(args, "state", None)
        )
    return None


async def open_explicit(
    args: argparse.Namespace,
) -> tuple[Connection | None, Callable[[ModuleType], Awaitable[None]]]:
    """Open the `--app`/`--broker` connection, if any, and make it the default; with it, the
    hook to run before a factory target is called (see `resolve_target`)."""
    explicit = explicit_connection(args)
    if explicit is not None:  # a factory target may enqueue: give it the connection
        await open_connection(explicit)
        Repid.set_magic_connection(explicit)

    async def open_module_app(module: ModuleType) -> None:
        # A factory in a module that defines one Repid app runs with that app connected,
        # as the app would be for the worker (docs/cli.md lists it as a connection source).
        app = module_app(module) if explicit is None else None
        if app is not None:
            await open_connection(app.connection)
            Repid.set_magic_connection(app.connection)

    return explicit, open_module_app


async def connect(args: argparse.Namespace) -> tuple[Target, Connection]:
    """Resolve `args.target` and open its connection (the explicit one when given)."""
    explicit, open_module_app = await open_explicit(args)
    module, target = await resolve_target(args.target, open_module_app)
    connection = resolve_connection(module, target, explicit=explicit)
    await open_connection(connection)
    Repid.set_magic_connection(connection)
    return target, connection


async def open_connection(connection: Connection) -> None:
    """Connect, and remember the connection for `close_opened`."""
    await connection.connect()
    if connection not in _OPENED:
        _OPENED.append(connection)


async def close_opened() -> None:
    """Disconnect every connection `open_connection` opened (errors ignored: we are exiting)."""
    while _OPENED:
        with contextlib.suppress(Exception):
            await _OPENED.pop().disconnect()


def actors_of(routers: Sequence[Router]) -> dict[str, ActorData]:
    """Every actor of the routers, by name (a later router wins a name clash)."""
    actors: dict[str, ActorData] = {}
    for router in routers:
        actors.update(router.actors)
    return actors
