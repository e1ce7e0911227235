"""Where workflow state lives: one store per backend, each with atomic first-wins step writes
and an atomic join arrival ("mark parent done, return how many have arrived")."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from repid.errors import ConfigurationError

if TYPE_CHECKING:
    from repid.connection import Connection

__all__ = ["StoredWorkflow", "WorkflowStore", "store_for"]


@dataclass(slots=True)
class StoredWorkflow:
    """One workflow as read back: its definition, status flag, step states and signals."""

    doc: str
    status: str = "running"
    steps: dict[str, str] = field(default_factory=dict)
    signals: dict[str, str] = field(default_factory=dict)


class WorkflowStore(Protocol):
    """The operations the engine needs; every write is atomic in the backend."""

    async def create(self, wf_id: str, doc: str, ttl: float) -> None:
        """Write a new workflow's definition (kept `ttl` seconds)."""
        ...

    async def get(self, wf_id: str) -> StoredWorkflow | None:
        """The workflow, or None when unknown or expired."""
        ...

    async def set_step(self, wf_id: str, step: str, state: str, terminal: bool) -> bool:
        """Write a step's state; a terminal state is written only by the first caller (True),
        a non-terminal one only while no terminal state exists."""
        ...

    async def arrive(self, wf_id: str, child: str, parent: str) -> tuple[bool, int]:
        """Record that `parent` of `child` succeeded: (newly recorded, parents arrived)."""
        ...

    async def set_status(self, wf_id: str, status: str) -> bool:
        """Set the workflow's status flag once (cancelled, timed_out); True if this call did."""
        ...

    async def put_signal(self, wf_id: str, name: str, data: str) -> None:
        """Record a named signal's JSON data."""
        ...

    async def list_ids(self, limit: int) -> list[str]:
        """Ids of the workflows kept, newest first."""
        ...


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
