"""RabbitMQ (aio-pika): queues prefixed with the run id, results in Redis when available."""

from __future__ import annotations

import os

from repid import Connection, InMemoryBucketBroker
from repid.brokers.rabbitmq import RabbitMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec

DSN = os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/")
PREFIX = f"repid-test-{RUN_ID}-"


def _rabbitmq(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    return Connection(
        RabbitMessageBroker(DSN, prefix=PREFIX, timeout=5.0),
        args_bucket_broker=InMemoryBucketBroker() if args_bucket else None,
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )


SPEC = BrokerSpec(
    make=_rabbitmq,
    capabilities=frozenset(
        {"strict_priorities", "native_delays", "native_dead_letters", "persistent"}
    ),
)
