"""Kafka (aiokafka) against the Kafka-protocol server `scripts/services.sh` starts.

`REPID_KAFKA_BOOTSTRAP` points the suite at another cluster (e.g. a real Kafka). Topics and
consumer groups are prefixed with the run id, so runs never collide.
"""

from __future__ import annotations

import os

from repid import Connection, InMemoryBucketBroker, KafkaMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec

BOOTSTRAP = os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092")


def _kafka(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    # No leases on Kafka (lease_duration is only for brokers that declare lease_renewal).
    return Connection(
        KafkaMessageBroker(BOOTSTRAP, topic_prefix=f"repid-{RUN_ID}-", commit_interval=0.05),
        args_bucket_broker=InMemoryBucketBroker() if args_bucket else None,
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )


SPEC = BrokerSpec(
    make=_kafka,
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
            "worker_registry",
        }
    ),
)
