"""Several RabbitMQ nodes (a cluster) behind one broker: the address list, its masked form, and
the failover that moves the robust connection to the next node while the current one is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import aio_pika
from yarl import URL

from repid._redact import mask_url

__all__ = ["Failover", "connect_first", "masked", "split_nodes"]

logger = logging.getLogger("repid.brokers.rabbitmq")


def split_nodes(dsn: str | Sequence[str]) -> list[str]:
    """The node URLs of `dsn`: a list of URLs, or one string of comma-separated URLs or hosts.

    In `amqp://user:pass@h1:5672,h2:5672,h3/vhost` the hosts share the user, the password, the
    vhost and the query of the whole string; a part with its own `scheme://` stands alone.
    """
    parts = [dsn] if isinstance(dsn, str) else list(dsn)
    nodes: list[str] = []
    for part in parts:
        pieces = [p.strip() for p in part.split(",") if p.strip()]
        if not pieces:
            continue
        if len(pieces) == 1 or all("://" in piece for piece in pieces):
            nodes.extend(pieces)
            continue
        scheme, _, rest = pieces[0].partition("://")
        userinfo, at, first_host = rest.rpartition("@")
        last = pieces[-1]
        cut = min((i for i in (last.find("/"), last.find("?")) if i >= 0), default=len(last))
        tail = last[cut:]  # the vhost and query, shared by every host
        hosts = [first_host.split("/", 1)[0].split("?", 1)[0], *pieces[1:-1], last[:cut]]
        nodes.extend(f"{scheme}://{userinfo}{at}{host}{tail}" for host in hosts)
    if not nodes:
        raise ValueError("no RabbitMQ address given")
    return nodes


def masked(nodes: Sequence[str]) -> str:
    """The node list as one string with every password hidden (for errors, logs and reprs)."""
    return ",".join(mask_url(node) for node in nodes)


async def connect_first(
    nodes: Sequence[str], *, timeout: float, reconnect_interval: float
) -> tuple[aio_pika.abc.AbstractRobustConnection, int]:
    """A robust connection to the first node that answers, and that node's index.

    Raises the last node's error (the caller maps it) when none answers.
    """
    error: BaseException | None = None
    for index, node in enumerate(nodes):
        try:
            connection = await aio_pika.connect_robust(
                node, timeout=timeout, reconnect_interval=reconnect_interval
            )
        except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
            if len(nodes) > 1:
                logger.warning("RabbitMQ node %s unreachable (%r)", mask_url(node), exc)
            error = exc
            continue
        return connection, index
    assert error is not None
    raise error


class Failover:
    """While the connection is lost, points its next reconnection attempt at the next node,
    every `interval` seconds (aio-pika retries every `reconnect_interval`), round-robin."""

    def __init__(
        self,
        connection: aio_pika.abc.AbstractRobustConnection,
        nodes: Sequence[str],
        current: int,
        interval: float,
    ) -> None:
        self.connection = connection
        self.nodes = list(nodes)
        self.current = current
        self.interval = interval
        self._lost = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if len(self.nodes) > 1:
            connection.close_callbacks.add(self._on_close)
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="repid-rabbitmq-failover"
            )

    def _on_close(self, *_: Any) -> None:
        self._lost.set()

    def _next(self) -> None:
        self.current = (self.current + 1) % len(self.nodes)
        node = self.nodes[self.current]
        # aio-pika reads `url` at each connection attempt (not in its ABC).
        self.connection.url = URL(node)  # type: ignore[attr-defined]
        logger.warning("RabbitMQ connection lost; next attempt at %s", mask_url(node))

    async def _run(self) -> None:
        connected: asyncio.Event = self.connection.connected
        while True:
            await self._lost.wait()
            self._lost.clear()
            while not connected.is_set():
                self._next()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(connected.wait(), self.interval)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
