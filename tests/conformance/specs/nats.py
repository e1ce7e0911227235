"""NATS JetStream: every stream, consumer and key-value bucket of this run starts with a prefix
holding `RUN_ID`; they are deleted when the session ends (`cleanup_nats`, also an exit hook).
Results and args are stored in NATS key-value buckets (`NatsBucketBroker`).
"""

from __future__ import annotations

import asyncio
import atexit
import os

from repid import Connection
from repid.brokers.nats import NatsBucketBroker, NatsMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec

SERVERS = os.environ.get("REPID_NATS_SERVERS", "nats://127.0.0.1:4222")
PREFIX = f"repid-test-{RUN_ID}-"


def _nats(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    broker = (
        NatsMessageBroker(SERVERS, prefix=PREFIX, operation_timeout=5.0)
        if lease_duration is None
        else NatsMessageBroker(
            SERVERS, prefix=PREFIX, operation_timeout=5.0, lease_duration=lease_duration
        )
    )
    return Connection(
        broker,
        args_bucket_broker=NatsBucketBroker(SERVERS, prefix=PREFIX) if args_bucket else None,
        results_bucket_broker=NatsBucketBroker(SERVERS, prefix=PREFIX, use_result_bucket=True),
    )


async def _cleanup(servers: str, prefix: str) -> int:
    import nats

    nc = await nats.connect(servers, connect_timeout=2, max_reconnect_attempts=0)
    try:
        js = nc.jetstream()
        kv_prefix = "KV_" + prefix.replace(".", "_")
        deleted = 0
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith((prefix, kv_prefix)):
                await js.delete_stream(name)
                deleted += 1
        return deleted
    finally:
        await nc.close()


def cleanup_nats(servers: str = SERVERS, prefix: str = PREFIX) -> int:
    """Delete every stream (and key-value bucket) of this run; returns how many."""
    try:
        return asyncio.run(_cleanup(servers, prefix))
    except Exception:
        return 0


atexit.register(cleanup_nats)

SPEC = BrokerSpec(
    make=_nats,
    capabilities=frozenset(
        {
            "actor_limits",
            "cancellation",
            "event_bus",
            "inspection",
            "liveness",
            "lease_renewal",
            "native_dead_letters",
            "native_delays",
            "persistent",
            "shared_state",
            "strict_priorities",
            "worker_registry",
        }
    ),
)
