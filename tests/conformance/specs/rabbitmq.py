"""RabbitMQ (aio-pika): every queue of this run starts with a prefix holding `RUN_ID`.

Results (and args) are stored in Redis, the bucket broker users pair with RabbitMQ; their keys
share the Redis spec's prefix, so its clean-up deletes them. Each test deletes the queues it
declared (with their dead-letter and delay queues).
"""

from __future__ import annotations

import os

from repid import Connection, RedisBucketBroker
from repid.brokers.rabbitmq import RabbitMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec
from tests.conformance.specs.redis import DSN as REDIS_DSN
from tests.conformance.specs.redis import PREFIX as REDIS_PREFIX

DSN = os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/")
PREFIX = f"repid-test-{RUN_ID}-"
BUCKET_PREFIX = f"{REDIS_PREFIX}rabbitmq:"


def _rabbitmq(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    return Connection(
        RabbitMessageBroker(DSN, prefix=PREFIX, timeout=5.0),
        args_bucket_broker=RedisBucketBroker(REDIS_DSN, prefix=BUCKET_PREFIX)
        if args_bucket
        else None,
        results_bucket_broker=RedisBucketBroker(
            REDIS_DSN, prefix=BUCKET_PREFIX, use_result_bucket=True
        ),
    )


SPEC = BrokerSpec(
    make=_rabbitmq,
    capabilities=frozenset(
        {
            "actor_limits",
            "cancellation",
            "event_bus",
            "inspection",
            "liveness",
            "native_dead_letters",
            "native_delays",
            "persistent",
            "strict_priorities",
            "worker_registry",
        }
    ),
)
