"""PgQueuer: `await queries.enqueue("noop", payload)`; worker
`PgQueuer.run(max_concurrent_tasks=C)`.

Runs in the pgqueuer virtualenv (asyncpg). Each queue of a run has its own schema
(`pgqueuer_<queue>`: PgQueuer has one job table and no queue names), its tables installed through
the connection's search_path and dropped by the clean-up. See `_common.NetCase` for the phases.
"""

from __future__ import annotations

import asyncio

import asyncpg
from _common import POSTGRES_DSN, JobCounter, NetCase, Producer
from pgqueuer import AsyncpgDriver, AsyncpgPoolDriver, Job, PgQueuer, Queries


def _schema(queue: str) -> str:
    """One schema per queue: PgQueuer has one job table, no queue names."""
    return "pgqueuer_" + queue.lower().replace("-", "_")


def _settings(queue: str) -> dict[str, str]:
    return {"search_path": _schema(queue)}


async def _ensure_schema(queue: str) -> None:
    conn = await asyncpg.connect(POSTGRES_DSN)
    try:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{_schema(queue)}"')
    finally:
        await conn.close()
    conn = await asyncpg.connect(POSTGRES_DSN, server_settings=_settings(queue))
    try:
        queries = Queries(AsyncpgDriver(conn))
        if not await queries.schema_is_installed():
            await queries.install()
    finally:
        await conn.close()


class PgqProducer(Producer):
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.queries = Queries(AsyncpgPoolDriver(pool))

    async def enqueue(self, i: int) -> object:
        return await self.queries.enqueue("noop", str(i).encode())

    async def close(self) -> None:
        await self.pool.close()


class PgqueuerCase(NetCase):
    case = "pgqueuer"
    framework = "pgqueuer"
    guarantees = "enqueue returns after the INSERT committed; a job is deleted when it finishes"
    notes = ("batch_size and the other run() options at their defaults",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_concurrent_tasks={concurrency}"

    async def producer(self, queue: str) -> Producer:
        await _ensure_schema(queue)
        pool = await asyncpg.create_pool(POSTGRES_DSN, server_settings=_settings(queue))
        return PgqProducer(pool)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def main() -> None:
            await _ensure_schema(queue)  # the latency phase starts its worker first
            conn = await asyncpg.connect(POSTGRES_DSN, server_settings=_settings(queue))
            pgq = PgQueuer(AsyncpgDriver(conn))

            @pgq.entrypoint("noop")
            async def noop(job: Job) -> None:
                counter.hit(int(job.payload or b"0"))

            counter.ready()
            await pgq.run(max_concurrent_tasks=concurrency)

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        conn = await asyncpg.connect(POSTGRES_DSN)
        try:
            for queue in queues:
                await conn.execute(f'DROP SCHEMA IF EXISTS "{_schema(queue)}" CASCADE')
        finally:
            await conn.close()


if __name__ == "__main__":
    PgqueuerCase().main()
