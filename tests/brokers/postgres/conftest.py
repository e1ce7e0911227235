"""Fixtures of the PostgreSQL-specific tests: a schema per test inside the run's database, all of
them dropped when the session ends (with the conformance suite's schema)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any
from uuid import uuid4

import asyncpg
import pytest

from repid import Connection
from repid.brokers.postgres import PostgresBucketBroker, PostgresMessageBroker
from tests.conformance.specs.postgres import DSN, SCHEMA, drop_schema

_SCHEMAS: list[str] = []


@pytest.fixture(scope="session", autouse=True)
def _drop_schemas_of_this_run() -> Iterator[None]:
    yield
    for schema in [*_SCHEMAS, SCHEMA]:
        drop_schema(DSN, schema)


@pytest.fixture
def schema() -> str:
    """A schema unique to the test (dropped at the end of the session)."""
    name = f"{SCHEMA}_{uuid4().hex[:6]}"
    _SCHEMAS.append(name)
    return name


@pytest.fixture
async def connect(schema: str) -> AsyncIterator[Any]:
    """`await connect(**options)`: a connected `Connection` on the test's schema, closed after."""
    opened: list[Connection] = []

    async def make(dsn: str = DSN, **options: Any) -> Connection:
        conn = Connection(
            PostgresMessageBroker(dsn, schema=schema, **options),
            results_bucket_broker=PostgresBucketBroker(dsn, schema=schema, use_result_bucket=True),
            args_bucket_broker=PostgresBucketBroker(dsn, schema=schema),
        )
        await conn.connect()
        opened.append(conn)
        return conn

    yield make
    for conn in reversed(opened):
        await conn.disconnect()


@pytest.fixture
async def user_conn() -> AsyncIterator[asyncpg.Connection]:
    """The application's own asyncpg connection (as a user's code would hold one)."""
    conn = await asyncpg.connect(DSN)
    yield conn
    await conn.close()
