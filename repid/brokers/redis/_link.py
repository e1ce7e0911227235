"""The Redis broker's connection to the server: reconnection with backoff and its Lua scripts.

One pipelined command connection serves every producer and consumer of a broker; commands that
fail because the connection dropped are retried on a new connection until the operation timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from repid._cancel import await_quietly
from repid.brokers.base import ConnectionPolicy
from repid.brokers.redis._client import (
    Arg,
    RedisAddress,
    RedisReplyError,
    RespConnection,
    open_connection,
)
from repid.errors import BrokerUnavailableError, ErrorMap, map_broker_errors

__all__ = ["DEFAULT_POLICY", "NO_ANSWER", "SCRIPTS", "Link", "Script"]

logger = logging.getLogger("repid.brokers.redis")


class Script:
    """One Lua script: called by its SHA1, loaded again when the server forgot it."""

    __slots__ = ("body", "name", "sha")

    def __init__(self, name: str, body: str) -> None:
        self.name = name
        self.body = body
        self.sha = hashlib.sha1(body.encode(), usedforsecurity=False).hexdigest()


def _load_scripts() -> dict[str, Script]:
    # Read by the package's own loader (also from a zip): importlib.resources takes ~4 ms to import.
    loader: Any = __spec__.loader
    path = os.path.join(os.path.dirname(__file__), "scripts.lua")
    text = loader.get_data(path).decode()
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    bare: set[str] = set()
    for line in text.splitlines():
        if line.startswith("-- @script "):
            name, *options = line.split()[2:]
            current = sections.setdefault(name, [])
            if "bare" in options:
                bare.add(name)
        elif current is not None:
            current.append(line)
    prelude = "\n".join(sections.pop("prelude")) + "\n"
    return {
        name: Script(name, ("" if name in bare else prelude) + "\n".join(body))
        for name, body in sections.items()
    }


SCRIPTS = _load_scripts()


DEFAULT_POLICY = ConnectionPolicy(
    connect_timeout=5.0, operation_timeout=10.0, reconnect_backoff=0.05
)
"""The Redis brokers' defaults: Redis answers in microseconds, so retry soon after a failure."""

NO_ANSWER: ErrorMap = {TimeoutError: BrokerUnavailableError}
"""A connected Redis that does not answer within the time-out is unreachable."""
_MAX_BACKOFF = 1.0


class Link:
    """The command connection of one broker, re-opened on demand after a failure."""

    def __init__(
        self,
        address: RedisAddress,
        policy: ConnectionPolicy = DEFAULT_POLICY,
        scripts: Sequence[Script] = (),
    ) -> None:
        self.address = address
        self.policy = policy
        self.connect_timeout = policy.connect_timeout
        self.timeout = policy.operation_timeout
        self.conn: RespConnection | None = None
        self._scripts = scripts
        self._lock: asyncio.Lock | None = None
        self._failures = 0
        self._watchdog: asyncio.Task[None] | None = None

    def start_watchdog(self) -> None:
        """Close the connection when Redis leaves commands unanswered for `timeout` seconds.

        A server that hangs without closing the socket would otherwise stall every caller; once
        closed, callers retry on a new connection (and give up after their timeout).
        """
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.create_task(self._watch(), name="repid-redis-watchdog")

    async def _watch(self) -> None:
        interval = max(0.05, min(1.0, self.timeout / 4))
        while True:
            await asyncio.sleep(interval)
            conn = self.conn
            if (
                conn is not None
                and conn.busy
                and time.monotonic() - conn.last_activity > self.timeout
            ):
                logger.error("Redis has not answered for %.1fs; reconnecting", self.timeout)
                conn.close()

    async def connection(self) -> RespConnection:
        conn = self.conn
        if conn is not None and not conn.closed:
            return conn
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            conn = self.conn
            if conn is not None and not conn.closed:
                return conn
            conn = await open_connection(self.address, self.connect_timeout)
            if self._scripts:  # a restarted server has forgotten them
                try:
                    with map_broker_errors(NO_ANSWER, "Redis is unreachable: loading the scripts"):
                        async with asyncio.timeout(self.connect_timeout):
                            await asyncio.gather(
                                *(conn.call("SCRIPT", "LOAD", s.body) for s in self._scripts)
                            )
                except BaseException:
                    conn.close()
                    raise
            if self._failures:
                logger.info("reconnected to Redis")
                self._failures = 0
            self.conn = conn
            return conn

    async def close(self) -> None:
        """Close the connection and stop the watchdog."""
        if self._watchdog is not None:
            self._watchdog.cancel()
            await await_quietly(self._watchdog)
            self._watchdog = None
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    async def call(self, *args: Arg, timeout: float | None = None) -> Any:
        """Run one command, reconnecting with backoff while Redis is unreachable.

        Raises `BrokerUnavailableError` once `timeout` (default: the link's) has passed.
        Only commands that are safe to repeat may go through here.
        """
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        backoff = self.policy.reconnect_backoff
        while True:
            try:
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    conn = await self.connection()
                    return await conn.call(*args)
            except (BrokerUnavailableError, TimeoutError) as exc:
                self._failures += 1
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailableError(
                        f"Redis unreachable for {self.timeout:g}s: {exc!r}"
                    ) from exc
                if self._failures == 1:
                    logger.warning("Redis connection failed (%s); retrying", exc)
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, max(_MAX_BACKOFF, self.policy.reconnect_backoff))

    async def transaction(self, *commands: Sequence[Arg]) -> list[Any]:
        """Run `commands` in one MULTI/EXEC (all or none); retried like `call`."""
        deadline = time.monotonic() + self.timeout
        backoff = self.policy.reconnect_backoff
        while True:
            try:
                async with asyncio.timeout(max(0.001, deadline - time.monotonic())):
                    conn = await self.connection()
                    # Issued without a suspension in between: nothing else lands inside.
                    replies = [conn.call("MULTI")]
                    replies += [conn.call(*command) for command in commands]
                    replies.append(conn.call("EXEC"))
                    done: list[Any] = await asyncio.gather(*replies)
                    return list(done[-1])
            except (BrokerUnavailableError, TimeoutError) as exc:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise BrokerUnavailableError(f"Redis unreachable: {exc!r}") from exc
                await asyncio.sleep(min(backoff, remaining))
                backoff = min(backoff * 2, max(_MAX_BACKOFF, self.policy.reconnect_backoff))

    async def script(
        self, script: Script, keys: list[bytes], args: list[Arg], timeout: float | None = None
    ) -> Any:
        """Run a Lua script by SHA1 (loading it when the server does not know it)."""
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args, timeout=timeout)
        except RedisReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        await self.call("SCRIPT", "LOAD", script.body, timeout=timeout)
        return await self.call("EVALSHA", script.sha, len(keys), *keys, *args, timeout=timeout)
