"""The in-memory broker: the embedded default, held to the same suite as the servers."""

from __future__ import annotations

from repid import Connection, InMemoryBucketBroker, InMemoryMessageBroker
from tests.conformance.specs import BrokerSpec


def _memory(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    broker = (
        InMemoryMessageBroker()
        if lease_duration is None
        else InMemoryMessageBroker(lease_duration=lease_duration)
    )
    return Connection(
        broker,
        args_bucket_broker=InMemoryBucketBroker() if args_bucket else None,
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )


SPEC = BrokerSpec(
    make=_memory,
    capabilities=frozenset(
        {
            "actor_limits",
            "cancellation",
            "event_bus",
            "inspection",
            "lease_renewal",
            "native_dead_letters",
            "native_delays",
            "strict_priorities",
            "worker_registry",
        }
    ),
)
