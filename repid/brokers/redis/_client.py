"""A lean pipelining RESP2 client (`asyncio.BufferedProtocol`) for the Redis broker's hot path.

Commands issued in one event-loop iteration leave in one write; replies (parsed by `_resp`)
are matched to their callers in order. Errors are repid's errors.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import deque
from collections.abc import Sequence
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from repid._redact import mask_url
from repid.brokers.redis._resp import RedisProtocolError, RedisReplyError, RespParser
from repid.errors import (
    BrokerAuthenticationError,
    BrokerUnavailableError,
    ConfigurationError,
    ErrorMap,
    map_broker_errors,
)

__all__ = [
    "RedisAddress",
    "RedisReplyError",
    "RespConnection",
    "encode_head",
    "open_connection",
]

logger = logging.getLogger("repid.brokers.redis")

Arg = bytes | str | int | float


_EARLY_FLUSH = 64
"""Commands buffered in one loop iteration before they are written without waiting for its end."""

_READ_SIZE = 256 * 1024
"""Bytes one socket read may return (asyncio's own read size)."""


class RedisAddress:
    """Where and how to connect, parsed from a `redis://`, `rediss://` or `unix://` DSN.

    The URL format is redis-py's: `redis://[[user]:password@]host[:port][/db]`,
    `unix://[[user]:password@]/path/to/socket?db=N`. (Parsed here: importing redis-py would add
    tens of milliseconds to every worker's start.)
    """

    __slots__ = ("db", "host", "password", "path", "port", "tls", "username")

    def __init__(self, dsn: str) -> None:
        # Every message quotes the DSN masked: a password with an unescaped "/" in it lands in
        # what urlsplit takes for the port or the database.
        url = urlsplit(dsn)
        if url.scheme not in {"redis", "rediss", "unix"}:
            raise ConfigurationError(
                f"Redis DSN must start with redis://, rediss:// or unix://, got {mask_url(dsn)!r}"
            )
        query = parse_qs(url.query)
        self.username: str | None = unquote(url.username) if url.username else None
        self.password: str | None = unquote(url.password) if url.password is not None else None
        self.tls = url.scheme == "rediss"
        self.path: str | None = None
        self.host = url.hostname or "127.0.0.1"
        try:
            self.port = url.port or 6379
        except ValueError:
            raise ConfigurationError(
                f"Redis DSN has a port that is not a number (percent-encode '/', '@', ':' in "
                f"a password): {mask_url(dsn)!r}"
            ) from None
        db = query.get("db", [""])[0]
        if url.scheme == "unix":
            self.path = unquote(url.path)
        elif url.path and url.path != "/":
            db = url.path.lstrip("/")
        try:
            self.db = int(db) if db else 0
        except ValueError:
            raise ConfigurationError(
                f"Redis database (the DSN's path or ?db=) must be a number: {mask_url(dsn)!r}"
            ) from None

    def __repr__(self) -> str:
        where = self.path if self.path is not None else f"{self.host}:{self.port}"
        return f"RedisAddress({where!r}, db={self.db}, tls={self.tls})"


def _encode(args: Sequence[Arg]) -> bytes:
    return b"*%d\r\n%b" % (len(args), _bulk(args))


def encode_head(*args: Arg) -> tuple[int, bytes]:
    """The leading arguments of a command sent many times (e.g. `EVALSHA sha n keys...`)."""
    return len(args), _bulk(args)


def _bulk(args: Sequence[Arg]) -> bytes:
    out = []
    for arg in args:
        if type(arg) is bytes:
            data = arg
        elif type(arg) is str:
            data = arg.encode()
        else:
            data = str(arg).encode()
        out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


class RespConnection(asyncio.BufferedProtocol):
    """One Redis connection; `call()` may be used by many tasks at once (replies in order).

    Reads go into one buffer allocated with the connection (`BufferedProtocol`): a plain
    `Protocol` gets each read as a new 256 KiB allocation, which glibc serves with an
    mmap/munmap pair (17% of the CPU time of a sequential enqueue loop under perf).
    """

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._parser = RespParser()
        self._read_view = memoryview(bytearray(_READ_SIZE))
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self.last_activity = time.monotonic()
        """When the server last answered, or when a command was sent to an idle connection."""
        self.lost: asyncio.Future[None] = self._loop.create_future()

    # -- asyncio.BufferedProtocol -------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._transport = None
        self._fail_waiters(
            BrokerUnavailableError(f"connection to Redis lost: {exc!r}" if exc else "closed")
        )
        if not self.lost.done():
            self.lost.set_result(None)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self._read_view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Parse the replies completed by `data` and resolve their callers."""
        self.last_activity = time.monotonic()
        try:
            replies = self._parser.feed(data)
        except RedisProtocolError as exc:
            # The stream is out of step with our commands: no later reply can be matched.
            logger.error("Redis sent a malformed reply (%s); closing the connection", exc)  # noqa: TRY400
            self._fail_waiters(exc)
            self.close()
            return
        waiters = self._waiters
        for reply in replies:
            if not waiters:  # pragma: no cover - a reply nobody asked for
                logger.warning("unexpected reply from Redis: %r", reply)
                continue
            fut = waiters.popleft()
            if not fut.done():
                if type(reply) is RedisReplyError:
                    fut.set_exception(reply)
                else:
                    fut.set_result(reply)

    def _fail_waiters(self, error: Exception) -> None:
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_exception(error)

    # -- commands --------------------------------------------------------------------------------

    def call(self, *args: Arg) -> asyncio.Future[Any]:
        """Send one command; the future resolves with its reply (errors raise)."""
        return self._send(_encode(args))

    def call_with_head(self, head: tuple[int, bytes], args: Sequence[Arg]) -> asyncio.Future[Any]:
        """`call(*head, *args)` with the head encoded once in advance (`encode_head`)."""
        return self._send(b"*%d\r\n%b%b" % (head[0] + len(args), head[1], _bulk(args)))

    def _send(self, command: bytes) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = self._loop.create_future()
        if self.closed or self._transport is None:
            fut.set_exception(BrokerUnavailableError("connection to Redis is closed"))
            return fut
        waiters = self._waiters
        if not waiters and not self._out:
            self.last_activity = time.monotonic()
            # An idle connection: send at once (a lone caller does not wait for the loop step).
            # Commands issued right after it in this step are batched behind it.
            waiters.append(fut)
            self._transport.write(command)
            return fut
        self._out.append(command)
        waiters.append(fut)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._scheduled_flush)
        elif len(self._out) >= _EARLY_FLUSH:
            self.flush()  # let Redis start on a long pipeline while we encode the rest
        return fut

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()

    def flush(self) -> None:
        """Write the commands buffered so far now (else they leave at the end of this loop step)."""
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self._transport is not None:
            self._transport.write(data)

    @property
    def busy(self) -> bool:
        """Commands are waiting for replies."""
        return bool(self._waiters)

    def close(self) -> None:
        self.closed = True
        if self._transport is not None:
            self._transport.close()


async def open_connection(address: RedisAddress, timeout: float) -> RespConnection:
    """Connect, authenticate and select the database; `BrokerUnavailableError` on failure."""
    loop = asyncio.get_running_loop()
    what = f"Redis at {_describe(address)} is unreachable: connecting"
    with map_broker_errors(_CONNECT_ERRORS, what):
        async with asyncio.timeout(timeout):
            if address.path is not None:
                _, protocol = await loop.create_unix_connection(RespConnection, address.path)
            else:
                context = ssl.create_default_context() if address.tls else None
                _, protocol = await loop.create_connection(
                    RespConnection, address.host, address.port, ssl=context
                )
            if address.password is not None:
                try:
                    if address.username:
                        await protocol.call("AUTH", address.username, address.password)
                    else:
                        await protocol.call("AUTH", address.password)
                except RedisReplyError as exc:  # one sentence, without the password
                    user = address.username or "default"
                    raise BrokerAuthenticationError(
                        f"Redis at {_describe(address)} refused the login of user {user!r}: "
                        f"{str(exc).split('.')[0]}"
                    ) from None
            if address.db:
                await protocol.call("SELECT", address.db)
    return protocol


_CONNECT_ERRORS: ErrorMap = {(OSError, TimeoutError): BrokerUnavailableError}
"""Socket, TLS (`ssl.SSLError` is an `OSError`) and time-out errors of opening a connection."""


def _describe(address: RedisAddress) -> str:
    return address.path if address.path is not None else f"{address.host}:{address.port}"
