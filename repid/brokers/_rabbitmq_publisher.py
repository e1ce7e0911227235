"""Confirmed publishing in batches: the publishes of one event-loop tick leave in one write.

aiormq writes each `basic_publish` separately (one socket send per message); gathering the
publishes made in the same tick and marshalling them into one frame batch keeps the per-message
cost to the frames themselves. Each message still gets its own publisher confirm (and its own
`mandatory` return), registered with the channel exactly as `basic_publish` does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiormq
from aiormq.abc import ChannelFrame
from pamqp import commands as spec
from pamqp.body import ContentBody
from pamqp.header import ContentHeader

_Item = tuple[str, str, bytes, spec.Basic.Properties, bool, "asyncio.Future[Any]"]


def supports_batches(channel: Any) -> bool:
    """The aiormq channel exposes what batching needs (else publish one by one)."""
    return all(
        hasattr(channel, name)
        for name in ("confirmations", "message_id_delivery_tag", "delivery_tag", "write_queue")
    )


class ConfirmBatcher:
    """Publishes on one confirming channel; `publish` returns once RabbitMQ confirmed."""

    def __init__(self) -> None:
        self._items: list[_Item] = []
        self._flushing = False

    async def publish(
        self,
        channel: aiormq.abc.AbstractChannel,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: spec.Basic.Properties,
        mandatory: bool,
    ) -> None:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._items.append((exchange, routing_key, body, properties, mandatory, done))
        if not self._flushing:
            self._flushing = True
            try:
                await asyncio.sleep(0)  # the other publishes of this tick join the batch
            finally:
                self._flushing = False
            items, self._items = self._items, []
            await self._send(channel, items)
        await done

    @staticmethod
    async def _send(channel: Any, items: list[_Item]) -> None:
        if channel.is_closed:
            error = aiormq.exceptions.ChannelInvalidStateError(f"{channel!r} closed")
            for *_, done in items:
                if not done.done():
                    done.set_exception(error)
            return
        frames: list[Any] = []
        max_size = channel.max_content_size
        async with channel.lock:
            for exchange, routing_key, body, properties, mandatory, done in items:
                channel.delivery_tag += 1
                tag = channel.delivery_tag
                confirmation = channel.create_future()
                channel.confirmations[tag] = confirmation
                message_id: str = properties.message_id or str(tag)
                channel.message_id_delivery_tag[message_id] = tag
                confirmation.add_done_callback(_forward(channel, message_id, tag, done))
                frames.append(
                    spec.Basic.Publish(
                        exchange=exchange, routing_key=routing_key, mandatory=mandatory
                    )
                )
                frames.append(ContentHeader(properties=properties, body_size=len(body)))
                frames.extend(
                    ContentBody(body[start : start + max_size])
                    for start in range(0, len(body), max_size)
                )
            await channel.write_queue.put(
                ChannelFrame.marshall(channel_number=channel.number, frames=frames)
            )


def _forward(channel: Any, message_id: str, tag: int, done: asyncio.Future[Any]) -> Any:
    def forward(confirmation: asyncio.Future[Any]) -> None:
        if channel.message_id_delivery_tag.get(message_id) == tag:
            channel.message_id_delivery_tag.pop(message_id)
        if done.done():
            return
        if confirmation.cancelled():
            done.set_exception(aiormq.exceptions.ChannelInvalidStateError("channel closed"))
        elif (exc := confirmation.exception()) is not None:
            done.set_exception(exc)
        elif isinstance(confirmation.result(), spec.Basic.Nack):
            done.set_exception(aiormq.exceptions.DeliveryError(None, confirmation.result()))
        else:
            done.set_result(None)

    return forward
