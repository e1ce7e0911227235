"""NATS JetStream broker (nats-py): a work-queue stream and durable pull consumers per queue."""

from repid.brokers.nats.broker import NatsMessageBroker
from repid.brokers.nats.buckets import NatsBucketBroker

__all__ = ["NatsBucketBroker", "NatsMessageBroker"]
