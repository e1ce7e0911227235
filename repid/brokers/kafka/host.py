"""What a Kafka consumer needs of its broker, as a Protocol: the consumer depends on this,
not on the broker class (which implements it), so the imports point one way."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from repid.brokers.base import Delivery
from repid.brokers.kafka.group import GroupHost
from repid.data import RoutingKey

__all__ = ["ConsumerHost"]


class ConsumerHost(GroupHost, Protocol):
    """What a consumer needs of its broker (the broker implements it)."""

    @property
    def commit_interval(self) -> float: ...

    @property
    def max_message_size(self) -> int:
        """Records longer than this are dead-lettered undecoded."""
        ...

    @property
    def commit_on_revoke(self) -> bool: ...

    @property
    def consumers(self) -> set[Any]:
        """The started consumers of the broker (a `KafkaConsumer` adds and removes itself)."""
        ...

    @property
    def tombstones(self) -> Mapping[tuple[str, str], float]:
        """Cancelled waiting messages (shared state): empty when none wait."""
        ...

    def is_tombstoned(self, delivery: Delivery) -> bool:
        """`delivery` was cancelled while it waited; consumed (asked once per delivery)."""
        ...

    async def queue_exists(self, queue_name: str) -> bool: ...

    async def publish(
        self,
        topic: str,
        value: bytes,
        headers: list[tuple[str, bytes]] | None = None,
        partition: int | None = None,
    ) -> None:
        """Write a record; return once Kafka has it."""
        ...

    async def release_unique(self, key: RoutingKey, *, together: bool = False) -> None: ...

    async def flush_releases(self) -> None: ...
