"""PostgreSQL (asyncpg): every table of this run lives in a schema named after `RUN_ID`.

`REPID_POSTGRES_DSN` points the suite at another server. The schema is dropped when the test
process exits (`drop_schema`, also run by the session fixture of `tests/brokers/postgres`).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os

import asyncpg

from repid import Connection
from repid.brokers.postgres import PostgresBucketBroker, PostgresMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec

DSN = os.environ.get("REPID_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
SCHEMA = f"repid_test_{RUN_ID}"


def _postgres(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    options = {} if lease_duration is None else {"lease_duration": lease_duration}
    return Connection(
        PostgresMessageBroker(DSN, schema=SCHEMA, poll_interval=0.5, **options),
        args_bucket_broker=PostgresBucketBroker(DSN, schema=SCHEMA) if args_bucket else None,
        results_bucket_broker=PostgresBucketBroker(DSN, schema=SCHEMA, use_result_bucket=True),
    )


async def _drop(dsn: str, schema: str) -> None:
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def drop_schema(dsn: str = DSN, schema: str = SCHEMA) -> None:
    """Drop this run's schema (and every table in it); a server that is down is ignored."""
    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        asyncio.run(_drop(dsn, schema))


atexit.register(drop_schema)

SPEC = BrokerSpec(
    make=_postgres,
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
