"""Cancel requests between processes: `cancel()` of a job not known here asks, on a fanout
exchange every worker process listens on; the process running the job flags it and answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Protocol
from uuid import uuid4

import aiormq
from aiormq.abc import DeliveredMessage
from pydantic_core import from_json, to_json

logger = logging.getLogger("repid.brokers.rabbitmq")

ANSWER_WITHIN = 0.5
"""Seconds `ask` waits for a worker process to say it runs the job."""


class ControlHost(Protocol):
    """What `Control` uses of its broker (`RabbitMessageBroker` is one)."""

    @property
    def _state(self) -> Any: ...

    @property
    def _in_flight(self) -> dict[tuple[str, str], int]: ...

    @property
    def _cancel_requests(self) -> set[str]: ...

    async def _new_channel(self, *, confirms: bool) -> aiormq.abc.AbstractChannel: ...


class Control:
    """The listening side (worker processes) and the asking side (`cancel`) of one broker."""

    def __init__(self, broker: ControlHost, prefix: str) -> None:
        self._broker = broker
        self.exchange = f"{prefix}repid.control"
        self._listener: aiormq.abc.AbstractChannel | None = None
        self._asker: aiormq.abc.AbstractChannel | None = None
        self._reply_queue = ""
        self._answers: dict[str, asyncio.Future[None]] = {}
        self._lock = asyncio.Lock()

    async def _declare_exchange(self, channel: aiormq.abc.AbstractChannel) -> None:
        await channel.exchange_declare(
            exchange=self.exchange, exchange_type="fanout", durable=True, auto_delete=True
        )

    async def listen(self) -> None:
        """Receive cancel requests (idempotent; re-done after a reconnection).

        Not needed with shared state: cancellations then go through Redis.
        """
        if self._broker._state is not None:
            return
        async with self._lock:
            if self._listener is not None and not self._listener.is_closed:
                return
            channel = await self._broker._new_channel(confirms=False)
            await self._declare_exchange(channel)
            declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
            queue = declared.queue or ""
            await channel.queue_bind(queue, self.exchange)
            await channel.basic_consume(queue, self._on_request, no_ack=True)
            self._listener = channel

    async def _on_request(self, message: DeliveredMessage) -> None:
        try:
            request = from_json(message.body)
            queue, id_, reply_to, ask_id = request["q"], request["id"], request["r"], request["a"]
        except (ValueError, KeyError, TypeError):
            logger.warning("ignoring a malformed control message %r", message.body[:200])
            return
        broker = self._broker
        if not broker._in_flight.get((queue, id_)):
            return
        broker._cancel_requests.add(id_)
        channel = self._listener
        if channel is not None and not channel.is_closed:
            with contextlib.suppress(aiormq.exceptions.AMQPError, OSError):
                await channel.basic_publish(ask_id.encode(), routing_key=reply_to)

    async def ask(self, queue: str, id_: str) -> bool:
        """True if a worker process runs job `id_` of `queue` (and was asked to cancel it)."""
        try:
            channel = await self._asking_channel()
        except aiormq.exceptions.ChannelNotFoundEntity:
            return False  # no exchange: no worker process listens

        ask_id = uuid4().hex
        answer: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._answers[ask_id] = answer
        try:
            body = to_json({"q": queue, "id": id_, "r": self._reply_queue, "a": ask_id})
            await channel.basic_publish(body, exchange=self.exchange)
            await asyncio.wait_for(answer, ANSWER_WITHIN)
        except TimeoutError:
            return False
        finally:
            self._answers.pop(ask_id, None)
        return True

    async def _asking_channel(self) -> aiormq.abc.AbstractChannel:
        async with self._lock:
            channel = self._asker
            if channel is None or channel.is_closed:
                channel = await self._broker._new_channel(confirms=False)
                # Passive: only listeners create the exchange (it goes away with the last one).
                await channel.exchange_declare(exchange=self.exchange, passive=True)
                declared = await channel.queue_declare("", exclusive=True, auto_delete=True)
                self._reply_queue = declared.queue or ""
                await channel.basic_consume(self._reply_queue, self._on_answer, no_ack=True)
                self._asker = channel
            return channel

    async def _on_answer(self, message: DeliveredMessage) -> None:
        answer = self._answers.get(message.body.decode(errors="replace"))
        if answer is not None and not answer.done():
            answer.set_result(None)

    async def close(self) -> None:
        for channel in (self._listener, self._asker):
            if channel is not None and not channel.is_closed:
                with contextlib.suppress(aiormq.exceptions.AMQPError, OSError, RuntimeError):
                    await channel.close()
        self._listener = self._asker = None
