"""Workflow state in the SQLite database of the broker: four tables; every operation runs in
one write transaction of the database's single writer, so first-wins writes and joins are atomic."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from repid.workflows.stores.base import RUNNING_PREFIX, StoredWorkflow

__all__ = ["SqliteStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS repid_workflows (
    id TEXT PRIMARY KEY, doc TEXT NOT NULL, status TEXT NOT NULL, created REAL, expires REAL);
CREATE TABLE IF NOT EXISTS repid_workflow_steps (
    wf TEXT, step TEXT, state TEXT NOT NULL, terminal INTEGER NOT NULL, PRIMARY KEY (wf, step));
CREATE TABLE IF NOT EXISTS repid_workflow_joins (
    wf TEXT, child TEXT, parent TEXT, PRIMARY KEY (wf, child, parent));
CREATE TABLE IF NOT EXISTS repid_workflow_signals (
    wf TEXT, name TEXT, data TEXT NOT NULL, PRIMARY KEY (wf, name));
"""
_PURGE = [
    f"DELETE FROM {table} WHERE wf IN (SELECT id FROM repid_workflows WHERE expires < ?)"
    for table in ("repid_workflow_steps", "repid_workflow_joins", "repid_workflow_signals")
] + ["DELETE FROM repid_workflows WHERE expires < ?"]


class SqliteStore:
    """Uses the broker's `Database` (its one connection thread)."""

    def __init__(self, broker: Any) -> None:
        self.db = broker.db
        self._ready = False

    async def _run(self, op: Any) -> Any:
        if not self._ready:

            def setup(conn: sqlite3.Connection) -> None:
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        conn.execute(statement)

            await self.db.run(setup)
            self._ready = True
        return await self.db.run(op)

    async def create(self, wf_id: str, doc: str, ttl: float) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            for sql in _PURGE:
                conn.execute(sql, (now,))
            conn.execute(
                "INSERT INTO repid_workflows VALUES (?, ?, 'running', ?, ?)",
                (wf_id, doc, now, now + ttl),
            )

        await self._run(op)

    async def get(self, wf_id: str) -> StoredWorkflow | None:
        def op(conn: sqlite3.Connection) -> StoredWorkflow | None:
            row = conn.execute(
                "SELECT doc, status FROM repid_workflows WHERE id = ? AND expires >= ?",
                (wf_id, time.time()),
            ).fetchone()
            if row is None:
                return None
            wf = StoredWorkflow(row[0], row[1])
            for step, state in conn.execute(
                "SELECT step, state FROM repid_workflow_steps WHERE wf = ?", (wf_id,)
            ):
                wf.steps[step] = state
            for name, data in conn.execute(
                "SELECT name, data FROM repid_workflow_signals WHERE wf = ?", (wf_id,)
            ):
                wf.signals[name] = data
            return wf

        result: StoredWorkflow | None = await self._run(op)
        return result

    async def set_step(
        self, wf_id: str, step: str, state: str, terminal: bool, *, unless_running: bool = False
    ) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "INSERT INTO repid_workflow_steps (wf, step, state, terminal) "
                "SELECT ?, ?, ?, ? WHERE EXISTS (SELECT 1 FROM repid_workflows WHERE id = ?) "
                "ON CONFLICT (wf, step) DO UPDATE SET state = excluded.state, "
                "terminal = excluded.terminal WHERE repid_workflow_steps.terminal = 0 "
                "AND NOT (? AND substr(repid_workflow_steps.state, 1, ?) = ?)",
                (
                    wf_id,
                    step,
                    state,
                    int(terminal),
                    wf_id,
                    int(unless_running),
                    len(RUNNING_PREFIX),
                    RUNNING_PREFIX,
                ),
            )
            return cur.rowcount > 0

        done: bool = await self._run(op)
        return done

    async def arrive(self, wf_id: str, child: str, parent: str) -> tuple[bool, int]:
        def op(conn: sqlite3.Connection) -> tuple[bool, int]:
            cur = conn.execute(
                "INSERT OR IGNORE INTO repid_workflow_joins VALUES (?, ?, ?)",
                (wf_id, child, parent),
            )
            (count,) = conn.execute(
                "SELECT count(*) FROM repid_workflow_joins WHERE wf = ? AND child = ?",
                (wf_id, child),
            ).fetchone()
            return cur.rowcount > 0, int(count)

        result: tuple[bool, int] = await self._run(op)
        return result

    async def set_status(self, wf_id: str, status: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                "UPDATE repid_workflows SET status = ? WHERE id = ? AND status = 'running'",
                (status, wf_id),
            )
            return cur.rowcount > 0

        done: bool = await self._run(op)
        return done

    async def put_signal(self, wf_id: str, name: str, data: str) -> None:
        await self._run(
            lambda conn: (
                conn.execute(
                    "INSERT OR REPLACE INTO repid_workflow_signals VALUES (?, ?, ?)",
                    (wf_id, name, data),
                )
                and None
            )
        )

    async def list_ids(self, limit: int) -> list[str]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT id FROM repid_workflows WHERE expires >= ? ORDER BY created DESC LIMIT ?",
                (time.time(), limit),
            )
            return [row[0] for row in rows]

        ids: list[str] = await self._run(op)
        return ids
