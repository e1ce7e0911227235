"""The Kafka broker's admin client: creates, lists, empties and deletes the topics of queues."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic, RecordsToDelete
from aiokafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

from repid.brokers.kafka.publisher import UNAVAILABLE
from repid.errors import BrokerError, BrokerUnavailableError, map_broker_errors

__all__ = ["TopicAdmin"]

logger = logging.getLogger("repid.brokers.kafka")

_TOPIC_ALREADY_EXISTS = 36


class TopicAdmin:
    """Owns the broker's `AIOKafkaAdminClient`; every call waits at most `timeout` seconds.

    Args:
        client_kwargs: the broker's keyword arguments for aiokafka clients.
        timeout: seconds one administrative call may take.
        replication_factor: replication of the topics created.
    """

    def __init__(
        self, client_kwargs: Callable[[], dict[str, Any]], timeout: float, replication_factor: int
    ) -> None:
        self._client_kwargs = client_kwargs
        self.timeout = timeout
        self.replication_factor = replication_factor
        self.client: AIOKafkaAdminClient | None = None

    async def start(self) -> None:
        self.client = AIOKafkaAdminClient(
            request_timeout_ms=int(self.timeout * 1000), **self._client_kwargs()
        )
        await self.client.start()

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            try:
                await client.close()
            except Exception:  # closing a broken client must not hide the original error
                logger.debug("closing the Kafka admin client failed", exc_info=True)

    def require(self) -> AIOKafkaAdminClient:
        if self.client is None:
            raise BrokerUnavailableError("the Kafka broker is not connected; call connect()")
        return self.client

    async def create(self, partitions: Mapping[str, int], what: str) -> None:
        """Create the topics (name -> partitions) that do not exist yet."""
        admin = self.require()
        missing = [NewTopic(name, n, self.replication_factor) for name, n in partitions.items()]
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                with map_broker_errors({UNAVAILABLE: BrokerUnavailableError}, what):
                    response = await admin.create_topics(missing)
            except TopicAlreadyExistsError:
                return
            # "Exists": a topic still being deleted (real Kafka) answers the same way until
            # it is gone, so wait for the ones that were not created.
            errors = {topic: code for topic, code, *_ in response.topic_errors if code != 0}
            if all(code == _TOPIC_ALREADY_EXISTS for code in errors.values()):
                return
            if time.monotonic() > deadline:
                raise BrokerError(f"{what} failed: {errors}")
            await asyncio.sleep(0.1)

    async def names(self) -> list[str]:
        """Every topic of the cluster."""
        with map_broker_errors({UNAVAILABLE: BrokerUnavailableError}, "listing topics"):
            topics: list[str] = await asyncio.wait_for(self.require().list_topics(), self.timeout)
        return topics

    async def delete_records(self, ends: Mapping[TopicPartition, int], what: str) -> None:
        """Move the log start of each partition to its end offset in `ends`."""
        to_delete = {tp: RecordsToDelete(end) for tp, end in ends.items() if end > 0}
        if to_delete:
            with map_broker_errors({UNAVAILABLE: BrokerUnavailableError}, what):
                await self.require().delete_records(to_delete, timeout_ms=int(self.timeout * 1000))

    async def delete(self, topics: list[str], what: str) -> None:
        """Delete the topics (no error for those that do not exist)."""
        try:
            with map_broker_errors({UNAVAILABLE: BrokerUnavailableError}, what):
                await self.require().delete_topics(topics)
        except UnknownTopicOrPartitionError:
            pass
