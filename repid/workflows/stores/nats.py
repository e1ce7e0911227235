"""Workflow state in the NATS key-value bucket of the results broker: one key per workflow,
changed only by compare-and-set on its revision (`kv.update(last=...)`), retried on conflict."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import nats.js.errors

from repid.workflows.stores.base import RUNNING_PREFIX, StoredWorkflow

__all__ = ["NatsStore"]

_TRIES = 200


class NatsStore:
    """Key `wf.<id>` holds {doc, status, steps, terminal, joins, signals, expires}."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker

    async def _read(self, wf_id: str) -> tuple[dict[str, Any] | None, int | None]:
        kv = self.broker.kv
        try:
            entry = await kv.get(f"wf.{wf_id}")
        except nats.js.errors.KeyNotFoundError:
            return None, None
        if not entry.value:
            return None, entry.revision
        record: dict[str, Any] = json.loads(entry.value)
        if record["expires"] < time.time():
            return None, entry.revision
        return record, entry.revision

    async def _change(self, wf_id: str, change: Callable[[dict[str, Any]], Any]) -> Any:
        """Apply `change` to the record by CAS; its return value is returned (None: no write)."""
        kv = self.broker.kv
        for _ in range(_TRIES):
            record, revision = await self._read(wf_id)
            if record is None:
                return None
            result = change(record)
            if result is None or result is False:
                return result
            try:
                await kv.update(f"wf.{wf_id}", json.dumps(record).encode(), last=revision)
            except nats.js.errors.KeyWrongLastSequenceError:
                continue  # another writer won: read again
            return result
        raise RuntimeError(f"workflow {wf_id}: too many concurrent updates")

    async def create(self, wf_id: str, doc: str, ttl: float) -> None:
        record = {
            "doc": doc,
            "status": "running",
            "steps": {},
            "terminal": [],
            "joins": {},
            "signals": {},
            "created": time.time(),
            "expires": time.time() + ttl,
        }
        await self.broker.kv.create(f"wf.{wf_id}", json.dumps(record).encode())

    async def get(self, wf_id: str) -> StoredWorkflow | None:
        record, _ = await self._read(wf_id)
        if record is None:
            return None
        return StoredWorkflow(
            record["doc"], record["status"], dict(record["steps"]), dict(record["signals"])
        )

    async def set_step(
        self, wf_id: str, step: str, state: str, terminal: bool, *, unless_running: bool = False
    ) -> bool:
        def change(record: dict[str, Any]) -> bool:
            if step in record["terminal"]:
                return False
            if unless_running and record["steps"].get(step, "").startswith(RUNNING_PREFIX):
                return False
            if terminal:
                record["terminal"].append(step)
            record["steps"][step] = state
            return True

        return bool(await self._change(wf_id, change))

    async def arrive(self, wf_id: str, child: str, parent: str) -> tuple[bool, int]:
        seen: list[int] = []

        def change(record: dict[str, Any]) -> tuple[bool, int] | None:
            arrived = record["joins"].setdefault(child, [])
            if parent in arrived:
                seen.append(len(arrived))
                return None
            arrived.append(parent)
            return True, len(arrived)

        result = await self._change(wf_id, change)
        if result is None:
            return False, seen[-1] if seen else 0
        added, count = result
        return bool(added), int(count)

    async def set_status(self, wf_id: str, status: str) -> bool:
        def change(record: dict[str, Any]) -> bool:
            if record["status"] != "running":
                return False
            record["status"] = status
            return True

        return bool(await self._change(wf_id, change))

    async def put_signal(self, wf_id: str, name: str, data: str) -> None:
        def change(record: dict[str, Any]) -> bool:
            record["signals"][name] = data
            return True

        await self._change(wf_id, change)

    async def list_ids(self, limit: int) -> list[str]:
        try:
            keys = await self.broker.kv.keys(filters=["wf.>"])
        except nats.js.errors.NoKeysError:
            return []
        return [key[3:] for key in reversed(keys)][:limit]
