"""The in-memory broker: the semantics of the network brokers inside one process, no server."""

from __future__ import annotations

from repid.brokers.memory.broker import InMemoryBucketBroker, InMemoryMessageBroker

__all__ = ["InMemoryBucketBroker", "InMemoryMessageBroker"]
