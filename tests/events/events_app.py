"""A Redis app that publishes its job events, for the cross-process test: keys under
`$REPID_TEST_PREFIX`, queue `$REPID_TEST_QUEUE`."""

from __future__ import annotations

import os

from repid import Connection, RedisMessageBroker, Repid, Router, RouterDefaults

DSN = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
PREFIX = os.environ.get("REPID_TEST_PREFIX", "repid-events-test:")

connection = Connection(RedisMessageBroker(DSN, prefix=PREFIX), publish_events=True)
app = Repid(connection)
router = Router(defaults=RouterDefaults(queue=os.environ.get("REPID_TEST_QUEUE", "default")))


@router.actor
async def work(n: int) -> int:
    return n * 2
