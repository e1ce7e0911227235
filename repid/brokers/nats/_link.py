"""The broker's connection to NATS: connect with a timeout, reconnect with backoff (nats-py does
it), and every operation bounded by the policy's `operation_timeout`, retried while the server
is unreachable, failing with `BrokerUnavailableError` (passwords masked)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from repid._redact import mask_url, mask_urls
from repid.brokers.base import ConnectionPolicy
from repid.errors import BrokerAuthenticationError, BrokerUnavailableError

logger = logging.getLogger("repid.brokers.nats")

T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    nats.errors.NoServersError,
    nats.js.errors.ServiceUnavailableError,
    asyncio.TimeoutError,
    OSError,
)
"""Errors after which an operation is tried again until its timeout."""

CONNECT_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, *TRANSIENT)


def servers_of(servers: str | list[str]) -> list[str]:
    return [s.strip() for s in servers.split(",")] if isinstance(servers, str) else list(servers)


def safe_servers(servers: str | list[str]) -> str:
    return ",".join(mask_url(s) for s in servers_of(servers))


class NatsLink:
    """One nats-py connection and its JetStream context, owned by one broker object."""

    def __init__(self, servers: str | list[str], policy: ConnectionPolicy, **options: Any):
        self.servers = servers_of(servers)
        self.policy = policy
        self.options = options
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._closing = False
        self._refused: str | None = None
        """Why the server refused the login, when it did (seen by `_on_error`)."""

    @property
    def where(self) -> str:
        return safe_servers(self.servers)

    def unreachable(self, exc: BaseException | None, doing: str) -> BrokerUnavailableError:
        detail = f": {mask_urls(str(exc))}" if exc is not None and str(exc) else ""
        kind = "" if exc is None else f" ({type(exc).__name__}{detail})"
        return BrokerUnavailableError(f"NATS broker is unreachable at {self.where}: {doing}{kind}")

    async def connect(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            return
        self._closing = False
        backoff = self.policy.reconnect_backoff
        try:
            self.nc = await asyncio.wait_for(
                nats.connect(
                    servers=self.servers,
                    connect_timeout=self.policy.connect_timeout,
                    reconnect_time_wait=max(backoff, 0.05),
                    max_reconnect_attempts=-1,
                    allow_reconnect=True,
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnect,
                    reconnected_cb=self._on_reconnect,
                    **self.options,
                ),
                self.policy.connect_timeout + 1.0,
            )
        except CONNECT_ERRORS as exc:
            refused, self._refused = self._refused, None
            if refused is not None:  # nats-py retried a refused login until the time-out
                raise BrokerAuthenticationError(
                    f"NATS at {self.where} refused the login ({refused})"
                ) from None
            raise self.unreachable(exc, "connect") from None
        self._js = self.nc.jetstream(timeout=self.policy.operation_timeout)

    async def close(self) -> None:
        nc, self.nc, self._js = self.nc, None, None
        self._closing = True
        if nc is not None and not nc.is_closed:
            try:
                await asyncio.wait_for(nc.drain(), self.policy.operation_timeout)
            except Exception:
                await nc.close()

    @property
    def client(self) -> Client:
        if self.nc is None:
            raise BrokerUnavailableError(f"NATS broker at {self.where} is not connected")
        return self.nc

    @property
    def js(self) -> JetStreamContext:
        if self._js is None:
            raise BrokerUnavailableError(f"NATS broker at {self.where} is not connected")
        return self._js

    @property
    def max_payload(self) -> int | None:
        return None if self.nc is None else self.nc.max_payload

    async def call(self, doing: str, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`, retrying transient failures until `operation_timeout` has passed.

        The first try runs bare (nats-py bounds every request by the same timeout); the retries
        are bounded by what is left of `operation_timeout`.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.policy.operation_timeout
        try:
            return await operation()
        except TRANSIENT as exc:
            error: BaseException = exc
        pause = max(0.01, min(self.policy.reconnect_backoff, 0.1))
        while True:
            if loop.time() + pause >= deadline:
                raise self.unreachable(error, doing) from None
            logger.debug("NATS %s failed (%s); retrying", doing, type(error).__name__)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
            try:
                async with asyncio.timeout(max(deadline - loop.time(), 0.05)):
                    return await operation()
            except TRANSIENT as exc:
                error = exc

    async def _on_error(self, exc: Exception) -> None:
        logger.debug("NATS connection error: %s", mask_urls(str(exc)))
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization" in str(exc).lower():
            self._refused = "authorization violation: wrong user, password or token"

    async def _on_disconnect(self) -> None:
        if not self._closing:
            logger.warning("NATS connection to %s lost; reconnecting", self.where)

    async def _on_reconnect(self) -> None:
        logger.info("NATS connection to %s re-established", self.where)
