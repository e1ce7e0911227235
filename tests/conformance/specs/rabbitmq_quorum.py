"""RabbitMQ with `queue_type="quorum"`: the whole suite again on quorum queues (one queue per
priority, quorum delay and dead-letter queues), on the local node.

Queues get their own prefix (a classic queue and a quorum queue cannot share a name); results
are stored in Redis as for the classic spec, and cleaned up with it. `REPID_RABBITMQ_NODES` (a
comma list of node URLs) points the spec at a cluster (tests/chaos/test_rabbitmq_cluster.py).
"""

from __future__ import annotations

import os

from repid import Connection, RedisBucketBroker
from repid.brokers.rabbitmq import RabbitMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec
from tests.conformance.specs.rabbitmq import BUCKET_PREFIX, DSN
from tests.conformance.specs.rabbitmq import SPEC as CLASSIC
from tests.conformance.specs.redis import DSN as REDIS_DSN

PREFIX = f"repid-test-{RUN_ID}-quorum-"
NODES = os.environ.get("REPID_RABBITMQ_NODES") or DSN


def _rabbitmq_quorum(
    *, lease_duration: float | None = None, args_bucket: bool = False
) -> Connection:
    return Connection(
        RabbitMessageBroker(NODES, prefix=PREFIX, timeout=5.0, queue_type="quorum"),
        args_bucket_broker=RedisBucketBroker(REDIS_DSN, prefix=BUCKET_PREFIX)
        if args_bucket
        else None,
        results_bucket_broker=RedisBucketBroker(
            REDIS_DSN, prefix=BUCKET_PREFIX, use_result_bucket=True
        ),
    )


SPEC = BrokerSpec(make=_rabbitmq_quorum, capabilities=CLASSIC.capabilities)
