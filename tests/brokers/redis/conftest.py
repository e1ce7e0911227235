"""Fixtures of the Redis-specific tests: a unique key prefix per test, a private `redis-server`.

Keys of the shared server (`REPID_REDIS_DSN`) carry the run's prefix and are deleted when the
session ends; a private server (for restart tests) lives in a temporary directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from uuid import uuid4

import pytest
from redis_test_support import RedisServer, make_connection

from repid import Connection
from tests.conformance.specs.redis import DSN, PREFIX, cleanup_redis_keys


@pytest.fixture(scope="session", autouse=True)
def _delete_keys_of_this_run() -> Iterator[None]:
    yield
    cleanup_redis_keys()


@pytest.fixture
def prefix() -> str:
    """A key prefix unique to the test (inside the run's prefix)."""
    return f"{PREFIX}{uuid4().hex[:8]}:"


@pytest.fixture
async def connect(prefix: str) -> AsyncIterator[Any]:
    """`await connect(**options)`: a connected `Connection` to the shared Redis, closed after."""
    opened: list[Connection] = []

    async def make(dsn: str = DSN, **options: float | None) -> Connection:
        conn = make_connection(dsn, prefix, **options)
        await conn.connect()
        opened.append(conn)
        return conn

    yield make
    for conn in opened:
        await conn.disconnect()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private `redis-server` (restartable), killed after the test."""
    server = RedisServer(tmp_path)
    server.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.kill()
            server.process.wait(10)
