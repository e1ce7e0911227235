"""The Kafka broker's event bus: one single-partition topic `<prefix>_repid_events` (created on
first use, Kafka's default retention); each subscription an aiokafka consumer without a group,
assigned the partition and starting at its end."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from aiokafka import AIOKafkaConsumer, TopicPartition

from repid.brokers.event_feed import SubscriptionCount
from repid.brokers.kafka.reading import UNREACHABLE
from repid.errors import BrokerUnavailableError, map_broker_errors

__all__ = ["KafkaEventBus"]


class KafkaEventBus(SubscriptionCount):
    """`SupportsEventBus` for the Kafka broker (a mixin: the broker sets the attributes)."""

    topic_prefix: str
    max_message_size: int
    connect_timeout: float
    operation_timeout: float
    _admin: Any
    _events_topic_ready: bool = False

    if TYPE_CHECKING:  # the broker's

        def client_kwargs(self) -> dict[str, Any]: ...

        async def publish(
            self,
            topic: str,
            value: bytes,
            headers: list[tuple[str, bytes]] | None = None,
            partition: int | None = None,
        ) -> None: ...

    @property
    def event_topic(self) -> str:
        """The topic of this broker's events."""
        return f"{self.topic_prefix}_repid_events"

    @property
    def max_event_size(self) -> int | None:
        """The producer's limit."""
        return self.max_message_size

    async def _events_topic(self) -> str:
        topic = self.event_topic
        if not self._events_topic_ready:
            partitions: Mapping[str, int] = {topic: 1}  # one partition: one order
            await self._admin.create(partitions, "creating the events topic")
            self._events_topic_ready = True
        return topic

    async def publish_event(self, data: bytes) -> None:
        await self.publish(await self._events_topic(), data)

    @asynccontextmanager
    async def subscribe_events(self) -> AsyncIterator[AsyncIterator[bytes]]:
        partition = TopicPartition(await self._events_topic(), 0)
        reader = AIOKafkaConsumer(
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=100,
            request_timeout_ms=max(40_000, int(self.operation_timeout * 1000)),
            **self.client_kwargs(),
        )
        try:
            with map_broker_errors({UNREACHABLE: BrokerUnavailableError}, "subscribing to events"):
                await asyncio.wait_for(reader.start(), self.connect_timeout)
                reader.assign([partition])
                await reader.seek_to_end(partition)
                # Resolve the end now: what is published after this point is read.
                await asyncio.wait_for(reader.position(partition), self.operation_timeout)
            self._event_subscriptions += 1
            try:
                yield _records(reader)
            finally:
                self._event_subscriptions -= 1
        finally:
            with contextlib.suppress(Exception):
                await reader.stop()


async def _records(reader: AIOKafkaConsumer) -> AsyncIterator[bytes]:
    while True:
        with map_broker_errors({UNREACHABLE: BrokerUnavailableError}, "reading events"):
            batches = await reader.getmany(timeout_ms=1000)
        for records in batches.values():
            for record in records:
                if record.value is not None:
                    yield record.value
