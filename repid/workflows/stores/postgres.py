"""Workflow state in the broker's PostgreSQL schema: first-wins step writes are conditional
upserts, a join's arrival is one `INSERT ... ON CONFLICT DO UPDATE ... RETURNING` on its row."""

from __future__ import annotations

import time
from typing import Any

from repid.workflows.stores.base import RUNNING_PREFIX, StoredWorkflow

__all__ = ["PostgresStore"]


class PostgresStore:
    """Tables `<prefix>workflows`, `..._steps`, `..._joins`, `..._signals` beside the broker's."""

    def __init__(self, broker: Any) -> None:
        self.link = broker.link
        names = broker.names
        self.wfs = names.table("workflows")
        self.steps = names.table("workflow_steps")
        self.joins = names.table("workflow_joins")
        self.signals = names.table("workflow_signals")
        self._ready = False

    async def _call(self, method: str, query: str, *args: Any) -> Any:
        if not self._ready:

            async def setup(conn: Any) -> None:
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS {self.wfs} (id text PRIMARY KEY, doc text "
                    "NOT NULL, status text NOT NULL, created double precision, expires double "
                    f"precision); CREATE TABLE IF NOT EXISTS {self.steps} (wf text, step text, "
                    "state text NOT NULL, terminal boolean NOT NULL, PRIMARY KEY (wf, step)); "
                    f"CREATE TABLE IF NOT EXISTS {self.joins} (wf text, child text, parents "
                    "text[] NOT NULL, PRIMARY KEY (wf, child)); "
                    f"CREATE TABLE IF NOT EXISTS {self.signals} (wf text, name text, data text "
                    "NOT NULL, PRIMARY KEY (wf, name))"
                )

            await self.link.run("create workflow tables", setup)
            self._ready = True

        async def run(conn: Any) -> Any:
            return await getattr(conn, method)(query, *args)

        return await self.link.run("workflow state", run)

    async def create(self, wf_id: str, doc: str, ttl: float) -> None:
        now = time.time()
        for table in (self.steps, self.joins, self.signals):
            await self._call(
                "execute",
                f"DELETE FROM {table} WHERE wf IN (SELECT id FROM {self.wfs} WHERE expires < $1)",
                now,
            )
        await self._call("execute", f"DELETE FROM {self.wfs} WHERE expires < $1", now)
        await self._call(
            "execute",
            f"INSERT INTO {self.wfs} VALUES ($1, $2, 'running', $3, $4)",
            wf_id,
            doc,
            now,
            now + ttl,
        )

    async def get(self, wf_id: str) -> StoredWorkflow | None:
        row = await self._call(
            "fetchrow",
            f"SELECT doc, status FROM {self.wfs} WHERE id = $1 AND expires >= $2",
            wf_id,
            time.time(),
        )
        if row is None:
            return None
        wf = StoredWorkflow(row[0], row[1])
        for step, state in await self._call(
            "fetch", f"SELECT step, state FROM {self.steps} WHERE wf = $1", wf_id
        ):
            wf.steps[step] = state
        for name, data in await self._call(
            "fetch", f"SELECT name, data FROM {self.signals} WHERE wf = $1", wf_id
        ):
            wf.signals[name] = data
        return wf

    async def set_step(
        self, wf_id: str, step: str, state: str, terminal: bool, *, unless_running: bool = False
    ) -> bool:
        row = await self._call(
            "fetchval",
            f"INSERT INTO {self.steps} AS s (wf, step, state, terminal) "
            f"SELECT $1, $2, $3, $4 WHERE EXISTS (SELECT 1 FROM {self.wfs} WHERE id = $1) "
            "ON CONFLICT (wf, step) DO UPDATE SET state = excluded.state, "
            "terminal = excluded.terminal WHERE NOT s.terminal "
            "AND NOT ($5 AND starts_with(s.state, $6)) RETURNING 1",
            wf_id,
            step,
            state,
            terminal,
            unless_running,
            RUNNING_PREFIX,
        )
        return row is not None

    async def arrive(self, wf_id: str, child: str, parent: str) -> tuple[bool, int]:
        count = await self._call(
            "fetchval",
            f"INSERT INTO {self.joins} AS j (wf, child, parents) VALUES ($1, $2, ARRAY[$3]) "
            "ON CONFLICT (wf, child) DO UPDATE SET parents = j.parents || $3::text "
            "WHERE NOT ($3 = ANY(j.parents)) RETURNING cardinality(parents)",
            wf_id,
            child,
            parent,
        )
        if count is not None:
            return True, int(count)
        count = await self._call(
            "fetchval",
            f"SELECT cardinality(parents) FROM {self.joins} WHERE wf = $1 AND child = $2",
            wf_id,
            child,
        )
        return False, int(count or 0)

    async def set_status(self, wf_id: str, status: str) -> bool:
        row = await self._call(
            "fetchval",
            f"UPDATE {self.wfs} SET status = $2 WHERE id = $1 AND status = 'running' RETURNING 1",
            wf_id,
            status,
        )
        return row is not None

    async def put_signal(self, wf_id: str, name: str, data: str) -> None:
        await self._call(
            "execute",
            f"INSERT INTO {self.signals} VALUES ($1, $2, $3) "
            "ON CONFLICT (wf, name) DO UPDATE SET data = excluded.data",
            wf_id,
            name,
            data,
        )

    async def list_ids(self, limit: int) -> list[str]:
        rows = await self._call(
            "fetch",
            f"SELECT id FROM {self.wfs} WHERE expires >= $1 ORDER BY created DESC LIMIT $2",
            time.time(),
            limit,
        )
        return [row[0] for row in rows]
