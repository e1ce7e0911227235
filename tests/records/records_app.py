"""A Redis app with job records on, for the cross-process tests: keys under
`$REPID_TEST_PREFIX`, queue `$REPID_TEST_QUEUE`; `fail` always raises, without retries."""

from __future__ import annotations

import os

from repid import Connection, RedisBucketBroker, RedisMessageBroker, Repid, Router, RouterDefaults

DSN = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("REPID_TEST_PREFIX", "repid-records-test:")

connection = Connection(
    RedisMessageBroker(DSN, prefix=PREFIX),
    results_bucket_broker=RedisBucketBroker(DSN, prefix=PREFIX, use_result_bucket=True),
    records=True,
)
app = Repid(connection)
router = Router(defaults=RouterDefaults(queue=os.environ.get("REPID_TEST_QUEUE", "default")))


@router.actor
async def work(n: int) -> int:
    return n * 2


@router.actor
async def fail(n: int) -> None:
    raise ValueError(f"failure {n}")
