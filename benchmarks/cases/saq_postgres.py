"""SAQ on PostgreSQL: `await queue.enqueue("noop", n=i)`; worker `saq.Worker(concurrency=C)`.

Runs in the saq-postgres virtualenv (`saq[postgres]`, psycopg 3). Each run has its own tables
(`saq_jobs_<run id>`, ...), dropped by the clean-up. See `_common.NetCase` for the phases.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from _common import POSTGRES_DSN, JobCounter, NetCase, Producer
from saq import Queue, Worker


def _tables(queue: str) -> dict[str, str]:
    run = queue.split("-", 1)[0].lower()
    return {
        "versions_table": f"saq_versions_{run}",
        "jobs_table": f"saq_jobs_{run}",
        "stats_table": f"saq_stats_{run}",
    }


def make_queue(queue: str) -> Queue:
    return Queue.from_url(POSTGRES_DSN, name=queue, **_tables(queue))


class SaqProducer(Producer):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        return await self.queue.enqueue("noop", n=i)

    async def close(self) -> None:
        await self.queue.disconnect()


class SaqPostgresCase(NetCase):
    case = "saq"
    framework = "saq"
    guarantees = "enqueue returns after the INSERT committed (psycopg autocommit)"
    notes = ("SAQ functions take keyword arguments: the job is noop(ctx, *, n)",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"concurrency={concurrency}"

    async def producer(self, queue: str) -> Producer:
        q = make_queue(queue)
        await q.connect()
        return SaqProducer(q)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def noop(ctx: dict[str, Any], *, n: int) -> None:
            counter.hit(n)

        async def startup(ctx: dict[str, Any]) -> None:
            counter.ready()

        async def main() -> None:
            q = make_queue(queue)
            await q.connect()
            worker = Worker(q, functions=[("noop", noop)], concurrency=concurrency, startup=startup)
            await worker.start()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True) as conn:
            for table in _tables(queues[0]).values():
                await conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')


if __name__ == "__main__":
    SaqPostgresCase().main()
