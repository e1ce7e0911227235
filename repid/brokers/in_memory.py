"""`repid.brokers.in_memory`, the import path of repid 1.6 and 2.0: the broker lives in
`repid.brokers.memory`."""

from __future__ import annotations

from repid.brokers.memory.broker import InMemoryBucketBroker, InMemoryMessageBroker

__all__ = ["InMemoryBucketBroker", "InMemoryMessageBroker"]
