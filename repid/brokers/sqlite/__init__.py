"""The SQLite broker: a durable embedded default shared by processes on one machine, no server."""

from __future__ import annotations

from repid.brokers.sqlite.broker import SqliteMessageBroker
from repid.brokers.sqlite.buckets import SqliteBucketBroker

__all__ = ["SqliteBucketBroker", "SqliteMessageBroker"]
