"""Redis (Streams): every key of this run starts with a prefix holding `RUN_ID`.

The keys are deleted when the test session ends (`cleanup_redis_keys`, run by the session
fixture in `tests/brokers/redis/conftest.py` and by an exit hook for runs that only collect
the conformance suite).
"""

from __future__ import annotations

import atexit
import os

import redis

from repid import Connection, RedisBucketBroker, RedisMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec

DSN = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
PREFIX = f"repid-test:{RUN_ID}:"


def _redis(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    broker = (
        RedisMessageBroker(DSN, prefix=PREFIX)
        if lease_duration is None
        else RedisMessageBroker(DSN, prefix=PREFIX, lease_duration=lease_duration)
    )
    return Connection(
        broker,
        args_bucket_broker=RedisBucketBroker(DSN, prefix=PREFIX) if args_bucket else None,
        results_bucket_broker=RedisBucketBroker(DSN, prefix=PREFIX, use_result_bucket=True),
    )


def cleanup_redis_keys(dsn: str = DSN, prefix: str = PREFIX) -> int:
    """Delete every key starting with `prefix`; returns how many were deleted."""
    client = redis.Redis.from_url(dsn)
    try:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.delete(*keys[start : start + 500])
        return len(keys)
    except redis.RedisError:
        return 0
    finally:
        client.close()


atexit.register(cleanup_redis_keys)

SPEC = BrokerSpec(
    make=_redis,
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
