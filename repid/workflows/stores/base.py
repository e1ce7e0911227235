"""The store interface the engine needs (`WorkflowStore`) and what a store reads back."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

__all__ = ["RUNNING_PREFIX", "StoredWorkflow", "WorkflowStore"]

RUNNING_PREFIX = '{"status": "running"'
"""How the JSON text of a running step's state begins (`progress.state` writes `status` first)."""


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

    async def set_step(
        self, wf_id: str, step: str, state: str, terminal: bool, *, unless_running: bool = False
    ) -> bool:
        """Write a step's state; a terminal state is written only by the first caller (True),
        a non-terminal one only while no terminal state exists, and with `unless_running` only
        while the step is not recorded as running either (checked in the same atomic write)."""
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
