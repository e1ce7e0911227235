"""The broker's AMQP link: one robust aio-pika connection, its shared channels, retried admin
RPCs and single publishes, and the fast frame reader bound to each aiormq connection it opens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
import aiormq
import yarl
from aiormq.abc import DeliveredMessage
from pamqp import commands as spec

from repid._cancel import await_quietly
from repid._redact import mask_url, mask_urls
from repid.brokers.base import ConnectionPolicy
from repid.brokers.rabbitmq import _compat
from repid.brokers.rabbitmq._frames import FrameReader, InlineConsumers
from repid.brokers.rabbitmq._nodes import Failover, connect_first, masked, split_nodes
from repid.brokers.rabbitmq._publisher import PublishBatcher
from repid.brokers.rabbitmq.channel_state import CHANNEL_ERRORS
from repid.errors import (
    BrokerAuthenticationError,
    BrokerError,
    BrokerUnavailableError,
    ConfigurationError,
    ErrorMap,
    RepidError,
    map_broker_errors,
)

__all__ = ["AmqpLink", "safe_dsn"]

logger = logging.getLogger("repid.brokers.rabbitmq")

_T = TypeVar("_T")


def _refusal(exc: BaseException | None, node: str) -> str | None:
    """A login or vhost refusal by RabbitMQ as one sentence (None for any other failure).

    aiormq reports a refused vhost as an `InvalidFrameError` quoting the `Connection.Close`
    frame that answered `Connection.Open`; a refused login as `ProbableAuthenticationError`.
    """
    url = yarl.URL(node)
    where = f"RabbitMQ at {url.host}:{url.port or 5672}"
    user = url.user or "guest"
    if isinstance(exc, aiormq.exceptions.ProbableAuthenticationError):
        return (
            f"{where} refused the login of user {user!r} (ACCESS_REFUSED: wrong user or password)"
        )
    text = str(exc) if isinstance(exc, aiormq.exceptions.InvalidFrameError) else ""
    if "Connection.OpenOk" in text and "Connection.Close" in text:
        vhost = url.path[1:] or "/"
        return (
            f"{where}: vhost {vhost!r} refused (it does not exist, or user {user!r} has no "
            "permission on it)"
        )
    return None


_UNREACHABLE: ErrorMap = {(*CHANNEL_ERRORS, TimeoutError): BrokerUnavailableError}
"""Client errors that mean "RabbitMQ is not reachable" at the boundary."""


def safe_dsn(dsn: str) -> str:
    """The DSN without its password (for messages and reprs); never raises (`mask_url`)."""
    return mask_url(dsn)


class AmqpLink:
    """The connection of one broker object, its shared channels and their fast paths.

    `fast_path=False` keeps every call on aio-pika's and aiormq's public path: no frame reader,
    no inline deliveries, publishes through `basic_publish`.
    """

    def __init__(self, dsn: str, policy: ConnectionPolicy, *, fast_path: bool) -> None:
        self.dsn = dsn
        self.policy = policy
        self.fast_path = fast_path and _compat.versions_supported()
        self.connection: aio_pika.abc.AbstractRobustConnection | None = None
        self.channels: dict[str, aiormq.abc.AbstractChannel] = {}
        self.channel_lock = asyncio.Lock()
        self.admin_lock = asyncio.Lock()
        """Held for each RPC of the admin channel."""
        self.batchers = {"confirm": PublishBatcher(), "fast": PublishBatcher()}
        self.inline_consumers: InlineConsumers = {}
        """Consumers whose whole deliveries the frame readers hand over (by consumer tag)."""
        self.readers: dict[int, tuple[Any, FrameReader]] = {}
        """id(aiormq connection) -> (that connection, its frame reader)."""
        self.failover: Failover | None = None

    async def connect(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            return
        try:
            nodes = split_nodes(self.dsn)  # one node, or a cluster's: the first that answers
            try:
                with map_broker_errors(_UNREACHABLE, f"connecting to RabbitMQ at {masked(nodes)}"):
                    self.connection, current = await connect_first(
                        nodes,
                        timeout=self.policy.connect_timeout,
                        reconnect_interval=self.policy.reconnect_backoff,
                    )
            except BrokerUnavailableError as exc:
                refusal = _refusal(exc.__cause__, nodes[0])
                if refusal is None:
                    raise
                raise BrokerAuthenticationError(refusal) from exc.__cause__
        except ValueError as exc:  # a URL yarl cannot parse; its text may quote the password
            if isinstance(exc, RepidError):
                raise
            raise ConfigurationError(
                f"RabbitMQ DSN is not a valid AMQP URL (percent-encode '/', '@', ':' in a "
                f"password): {safe_dsn(self.dsn)!r}: {mask_urls(str(exc))}"
            ) from None
        self.failover = Failover(self.connection, nodes, current, self.policy.reconnect_backoff)

    async def close(self) -> None:
        for batcher in self.batchers.values():
            await batcher.drain()  # unconfirmed publishes still buffered leave first
        connection, self.connection = self.connection, None
        failover, self.failover = self.failover, None
        if failover is not None:
            await failover.close()
        self.channels.clear()
        for _, reader in self.readers.values():
            reader.unbind()
        self.readers.clear()
        if connection is not None:
            await await_quietly(connection.close(), *CHANNEL_ERRORS)

    def _bind_reader(self, connection: Any) -> None:
        """Serve this aiormq connection (opened by us) with a `FrameReader`, once."""
        if id(connection) in self.readers:
            return
        for key, (known, reader) in list(self.readers.items()):
            if known.is_closed:  # an earlier incarnation of the robust connection
                reader.unbind()
                del self.readers[key]
        try:
            receiver = _compat.frame_receiver_of(connection)
            if receiver is None:
                _compat.log_fallback_once("binding", LookupError("no FrameReceiver found"))
                return
            self.readers[id(connection)] = (
                connection,
                FrameReader(receiver, self.inline_consumers),
            )
        except Exception as exc:
            _compat.log_fallback_once("binding", exc)

    async def new_channel(self, *, confirms: bool) -> aiormq.abc.AbstractChannel:
        """A fresh AMQP channel on the current connection (waits for a reconnection)."""
        connection = self.connection
        if connection is None:
            raise BrokerError("RabbitMessageBroker is not connected; call connect() first")
        timeout = self.policy.connect_timeout
        with map_broker_errors(
            _UNREACHABLE, f"RabbitMQ is unreachable: reconnecting (for {timeout}s)"
        ):
            await asyncio.wait_for(connection.ready(), timeout)
        transport = connection.transport
        if transport is None:
            raise BrokerUnavailableError("RabbitMQ connection is reconnecting")
        if self.fast_path:
            self._bind_reader(transport.connection)
        channel: aiormq.abc.AbstractChannel = await transport.connection.channel(
            publisher_confirms=confirms
        )
        return channel

    async def channel(self, kind: str) -> aiormq.abc.AbstractChannel:
        """The shared channel `kind` ("confirm", "fast" or "admin"), reopened when it closed."""
        channel = self.channels.get(kind)
        if channel is not None and not channel.is_closed:
            return channel
        async with self.channel_lock:
            channel = self.channels.get(kind)
            if channel is None or channel.is_closed:
                channel = await self.new_channel(confirms=kind == "confirm")
                self.channels[kind] = channel
            return channel

    async def retrying(
        self, what: str, attempt: Callable[[], Awaitable[_T]], *, log: bool = False
    ) -> _T:
        """Run `attempt` until it succeeds, retrying connection failures with backoff until
        `operation_timeout`; then `BrokerUnavailableError`. Channel errors (a queue that does
        not exist, ...) are not retried."""
        deadline = time.monotonic() + self.policy.operation_timeout
        backoff = 0.05
        while True:
            try:
                return await attempt()
            except aiormq.exceptions.ChannelClosed:
                raise
            except (TimeoutError, *CHANNEL_ERRORS) as exc:
                if time.monotonic() + backoff > deadline:
                    timeout = self.policy.operation_timeout
                    with map_broker_errors(_UNREACHABLE, f"{what} (for {timeout}s)"):
                        raise
                    raise  # pragma: no cover - map_broker_errors always raises here
                if log:
                    logger.warning("%s failed (%r); retrying in %.2fs", what, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)

    async def admin(self, operation: str, *args: Any, **kwargs: Any) -> Any:
        """Run one RPC on the admin channel, retrying connection failures."""

        async def attempt() -> Any:
            # One RPC at a time: a probe that fails (a passive declare of a missing queue)
            # closes the channel, and an RPC queued behind it would get that error as its own.
            async with self.admin_lock:
                channel = await self.channel("admin")
                return await getattr(channel, operation)(*args, **kwargs)

        return await self.retrying(f"RabbitMQ {operation}", attempt)

    async def publish_once(
        self,
        kind: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        *,
        mandatory: bool,
    ) -> None:
        """Publish one message on the shared channel `kind`; on "confirm" return once RabbitMQ
        confirmed it. A nack closes the channel: the retry gets a fresh one (a channel that
        published to a quorum queue whose leader died can keep getting nacks)."""
        channel = await self.channel(kind)
        try:
            await self._publish_on(
                channel, kind, exchange, routing_key, body, properties, mandatory
            )
        except aiormq.exceptions.PublishError:
            raise  # returned (no such queue): the channel is fine
        except aiormq.exceptions.DeliveryError:
            if self.channels.get(kind) is channel:
                del self.channels[kind]
            await await_quietly(channel.close(), *CHANNEL_ERRORS)
            raise

    async def _publish_on(
        self,
        channel: aiormq.abc.AbstractChannel,
        kind: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        if self.fast_path and _compat.publish_internals(channel):
            try:
                await self.batchers[kind].publish(
                    channel, exchange, routing_key, body, properties, mandatory=mandatory
                )
                return
            except _compat.FastPathError:
                pass  # nothing was sent (the batcher logged why): the public path sends it
        confirmation = await channel.basic_publish(
            body,
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            mandatory=mandatory,
            wait=False,  # type: ignore[call-arg]  # aiormq 7.2's channel has it, its ABC not
        )
        if isinstance(confirmation, spec.Basic.Nack):
            raise aiormq.exceptions.DeliveryError(None, confirmation)

    # -- consumers served from the frame reader --------------------------------------------------

    def register_inline(
        self, consumer_tag: str, channel: Any, on_message: Callable[[DeliveredMessage], None]
    ) -> None:
        self.inline_consumers[consumer_tag] = (channel, on_message)

    def unregister_inline(self, consumer_tag: str) -> None:
        self.inline_consumers.pop(consumer_tag, None)
