"""The Redis broker's link through redis-py's asyncio client: `Redis`, `RedisCluster` or a
Sentinel-managed client (from a DSN, or the user's own), with redis-py errors mapped to repid's.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio
import redis.exceptions

from repid._redact import mask_url, mask_urls
from repid.brokers.base import ConnectionPolicy
from repid.brokers.redis._client import Arg, RedisReplyError
from repid.brokers.redis._link import DEFAULT_POLICY, Link, Script
from repid.errors import BrokerError, BrokerUnavailableError, ConfigurationError

__all__ = ["PyLink", "client_from_dsn"]

_CODES = {
    redis.exceptions.NoScriptError: "NOSCRIPT",
    redis.exceptions.ExecAbortError: "EXECABORT",
}


def client_from_dsn(dsn: str, policy: ConnectionPolicy) -> Any:
    """A `redis.asyncio.Redis` for any DSN redis-py accepts (`rediss://` TLS options, ACL user)."""
    try:
        return redis.asyncio.Redis.from_url(
            dsn,
            socket_connect_timeout=policy.connect_timeout,
            socket_timeout=policy.operation_timeout,
            decode_responses=False,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid Redis DSN {mask_url(dsn)!r}: {exc}") from None


def _where(client: Any) -> str:
    """host:port (or the nodes) a client talks to, for error messages (never credentials)."""
    nodes = getattr(client, "startup_nodes", None)
    if nodes:  # RedisCluster
        return ",".join(f"{n.host}:{n.port}" for n in nodes[:3]) + (
            " ..." if len(nodes) > 3 else ""
        )
    pool = getattr(client, "connection_pool", None)
    service = getattr(pool, "service_name", None)
    if service is not None:  # a Sentinel-managed client
        return f"sentinel service {service!r}"
    kwargs = pool.connection_kwargs if pool is not None else {}
    if kwargs.get("path"):
        return str(kwargs["path"])
    return f"{kwargs.get('host', '?')}:{kwargs.get('port', 6379)}"


def _raw(command: Arg, reply: Any) -> Any:
    """A reply in the shape the hand-written client gives (redis-py parses some commands)."""
    if command in ("XREADGROUP", b"XREADGROUP") and isinstance(reply, dict):  # RESP3
        return [[stream, _raw("", entries)] for stream, entries in reply.items()]
    if isinstance(reply, bool):
        return b"OK" if reply else None
    if isinstance(reply, dict):
        flat: list[Any] = []
        for key, value in reply.items():
            flat += (key, _raw("", value))
        return flat
    if isinstance(reply, set):
        return list(reply)
    if isinstance(reply, list | tuple):
        return [_raw("", item) for item in reply]
    return reply


class _Conn:
    """What `Link`'s retry loops call: one command on the client, errors as repid's."""

    def __init__(self, client: Any, where: str) -> None:
        self.client = client
        self.where = where

    async def call(self, *args: Arg) -> Any:
        with _Mapped(self.where):
            reply = await self.client.execute_command(*args)
        return _raw(args[0], reply)

    def close(self) -> None:
        """Nothing to close: the client's pool owns its connections."""


class _Mapped:
    """redis-py's exceptions -> repid's, in one line naming where (never the password)."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, _: Any) -> None:
        if exc is None or not isinstance(exc, redis.exceptions.RedisError):
            return
        text = mask_urls(str(exc))
        if isinstance(
            exc, redis.exceptions.AuthenticationError | redis.exceptions.NoPermissionError
        ):
            raise BrokerError(f"Redis at {self.where} refused the credentials: {text}") from None
        if isinstance(exc, redis.exceptions.ConnectionError) and (
            "SSL" in text or "certificate" in text
        ):
            raise BrokerError(f"TLS with Redis at {self.where} failed: {text}") from None
        if isinstance(
            exc,
            redis.exceptions.ConnectionError
            | redis.exceptions.TimeoutError
            | redis.exceptions.ReadOnlyError  # a replica promoted meanwhile: try again
            | redis.exceptions.ClusterError
            | redis.exceptions.TryAgainError,
        ):
            raise BrokerUnavailableError(
                f"Redis at {self.where} is unreachable: {type(exc).__name__}: {text}"
            ) from exc
        if isinstance(exc, redis.exceptions.ResponseError):
            code = _CODES.get(type(exc))
            raise RedisReplyError(f"{code} {text}" if code else text) from None
        raise BrokerError(f"Redis at {self.where}: {type(exc).__name__}: {text}") from exc


class PyLink(Link):
    """A `Link` on a redis-py asyncio client; the retry loops are `Link`'s.

    `conn` stays None: the broker's hand-written fast paths (`call_with_head`, batched acks on
    one connection) are not taken; their fallbacks call `script()` here.
    """

    def __init__(
        self,
        client: Any,
        policy: ConnectionPolicy = DEFAULT_POLICY,
        scripts: Sequence[Script] = (),
        owned: bool = True,
    ) -> None:
        super().__init__(None, policy, scripts)  # type: ignore[arg-type]
        kwargs: dict[str, Any] = {}
        with contextlib.suppress(Exception):
            kwargs = client.get_connection_kwargs()
        if kwargs.get("decode_responses"):
            raise ConfigurationError("the Redis client must not decode responses")
        self.client = client
        self.where = _where(client)
        self._owned = owned
        self._adapter = _Conn(client, self.where)
        self._loaded = False

    def __repr__(self) -> str:
        return f"PyLink({type(self.client).__name__}, {self.where})"

    def start_watchdog(self) -> None:
        """redis-py's socket time-outs bound every command: no watchdog."""

    async def connection(self) -> Any:
        if not self._loaded:
            async with asyncio.timeout(self.connect_timeout):
                await self._adapter.call("PING")
                for script in self._scripts:
                    await self._load(script)
            self._loaded = True
        return self._adapter

    async def _load(self, script: Script) -> None:
        with _Mapped(self.where):
            await self.client.script_load(script.body)  # every primary of a cluster

    async def close(self) -> None:
        if self._owned:
            await self.client.aclose()
        self._loaded = False

    async def transaction(self, *commands: Sequence[Arg]) -> list[Any]:
        """Run `commands` in one MULTI/EXEC on one connection (same slot on a cluster)."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with _Mapped(self.where):
                    async with self.client.pipeline(transaction=True) as pipe:
                        for command in commands:
                            pipe.execute_command(*command)
                        return [
                            _raw(c[0], r)
                            for c, r in zip(commands, await pipe.execute(), strict=True)
                        ]
            except BrokerUnavailableError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(self.policy.reconnect_backoff)

    async def script(
        self, script: Script, keys: list[bytes], args: list[Arg], timeout: float | None = None
    ) -> Any:
        try:
            return await self.call("EVALSHA", script.sha, len(keys), *keys, *args, timeout=timeout)
        except RedisReplyError as exc:
            if exc.code != "NOSCRIPT":
                raise
        await self._load(script)  # a restarted or promoted server has forgotten it
        return await self.call("EVALSHA", script.sha, len(keys), *keys, *args, timeout=timeout)
