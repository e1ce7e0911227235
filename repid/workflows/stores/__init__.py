"""Where workflow state lives: one store per backend, each with atomic first-wins step writes
and an atomic join arrival ("mark parent done, return how many have arrived")."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

from repid.errors import ConfigurationError
from repid.workflows.stores.base import StoredWorkflow, WorkflowStore

if TYPE_CHECKING:
    from repid.connection import Connection

__all__ = ["StoredWorkflow", "WorkflowStore", "store_for"]


_STORES: weakref.WeakKeyDictionary[object, WorkflowStore] = weakref.WeakKeyDictionary()


def _make(broker: object) -> WorkflowStore | None:
    module = type(broker).__module__
    if module.startswith(("repid.brokers.memory", "repid.brokers.in_memory")):
        from repid.workflows.stores.memory import MemoryStore

        return MemoryStore()
    if module.startswith("repid.brokers.redis"):
        from repid.workflows.stores.redis import RedisStore

        return RedisStore(broker)
    if module.startswith("repid.brokers.sqlite"):
        from repid.workflows.stores.sqlite import SqliteStore

        return SqliteStore(broker)
    if module.startswith("repid.brokers.postgres"):
        from repid.workflows.stores.postgres import PostgresStore

        return PostgresStore(broker)
    if module.startswith("repid.brokers.nats") and hasattr(type(broker), "kv"):
        from repid.workflows.stores.nats import NatsStore

        return NatsStore(broker)
    return None


def store_for(connection: Connection) -> WorkflowStore:
    """The store of `connection`: its results bucket broker's, else its message broker's.

    Raises:
        ConfigurationError: neither broker can keep workflow state.
    """
    for broker in (connection.raw_results_bucket_broker, connection.raw_message_broker):
        if broker is None:
            continue
        store = _STORES.get(broker)
        if store is None:
            store = _make(broker)
            if store is None:
                continue
            _STORES[broker] = store
        return store
    raise ConfigurationError(
        f"workflows need a store: {type(connection.raw_message_broker).__name__} keeps none; "
        "give the Connection a results_bucket_broker (Redis, PostgreSQL, SQLite, NATS or "
        "in-memory) to keep workflow state in"
    )
