"""The PostgreSQL broker (asyncpg; `FOR UPDATE SKIP LOCKED` claims, LISTEN/NOTIFY wake-ups) and
its bucket broker. Imported on first use of a name. Needs `pip install repid[postgres]`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from repid.brokers.postgres.broker import PostgresMessageBroker
    from repid.brokers.postgres.buckets import PostgresBucketBroker

__all__ = ["PostgresBucketBroker", "PostgresMessageBroker"]


def __getattr__(name: str) -> Any:
    if name == "PostgresMessageBroker":
        from repid.brokers.postgres.broker import PostgresMessageBroker

        return PostgresMessageBroker
    if name == "PostgresBucketBroker":
        from repid.brokers.postgres.buckets import PostgresBucketBroker

        return PostgresBucketBroker
    raise AttributeError(f"module 'repid.brokers.postgres' has no attribute {name!r}")
