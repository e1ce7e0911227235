"""Workflow state in this process, guarded by a lock: for the in-memory broker and tests."""

from __future__ import annotations

import threading
import time

from repid.workflows.stores.base import RUNNING_PREFIX, StoredWorkflow

__all__ = ["MemoryStore"]


class MemoryStore:
    """A lock-protected dict; state is lost with the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wfs: dict[str, tuple[float, StoredWorkflow]] = {}
        self._terminal: dict[tuple[str, str], bool] = {}
        self._arrived: dict[tuple[str, str], set[str]] = {}

    def _live(self, wf_id: str) -> StoredWorkflow | None:
        entry = self._wfs.get(wf_id)
        if entry is None:
            return None
        if entry[0] < time.time():
            del self._wfs[wf_id]
            return None
        return entry[1]

    async def create(self, wf_id: str, doc: str, ttl: float) -> None:
        with self._lock:
            self._wfs[wf_id] = (time.time() + ttl, StoredWorkflow(doc))

    async def get(self, wf_id: str) -> StoredWorkflow | None:
        with self._lock:
            wf = self._live(wf_id)
            if wf is None:
                return None
            return StoredWorkflow(wf.doc, wf.status, dict(wf.steps), dict(wf.signals))

    async def set_step(
        self, wf_id: str, step: str, state: str, terminal: bool, *, unless_running: bool = False
    ) -> bool:
        with self._lock:
            wf = self._live(wf_id)
            if wf is None or self._terminal.get((wf_id, step)):
                return False
            if unless_running and wf.steps.get(step, "").startswith(RUNNING_PREFIX):
                return False
            self._terminal[(wf_id, step)] = terminal
            wf.steps[step] = state
            return True

    async def arrive(self, wf_id: str, child: str, parent: str) -> tuple[bool, int]:
        with self._lock:
            arrived = self._arrived.setdefault((wf_id, child), set())
            added = parent not in arrived
            arrived.add(parent)
            return added, len(arrived)

    async def set_status(self, wf_id: str, status: str) -> bool:
        with self._lock:
            wf = self._live(wf_id)
            if wf is None or wf.status != "running":
                return False
            wf.status = status
            return True

    async def put_signal(self, wf_id: str, name: str, data: str) -> None:
        with self._lock:
            wf = self._live(wf_id)
            if wf is not None:
                wf.signals[name] = data

    async def list_ids(self, limit: int) -> list[str]:
        with self._lock:
            return list(reversed(self._wfs))[:limit]
