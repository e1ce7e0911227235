"""procrastinate: `await noop.defer_async(n=i)`; worker `app.run_worker_async(concurrency=C)`.

Runs in the procrastinate virtualenv (psycopg 3). Each run has its own schema
(`procrastinate_<run id>`, procrastinate's tables applied into it by its schema manager),
dropped by the clean-up. Finished jobs stay in the table (procrastinate's default). See
`_common.NetCase` for the phases.
"""

from __future__ import annotations

import asyncio
from typing import Any

import psycopg
from _common import POSTGRES_DSN, JobCounter, NetCase, Producer
from procrastinate import App, PsycopgConnector


def _schema(queue: str) -> str:
    return f"procrastinate_{queue.split('-', 1)[0].lower()}"


def make_app(queue: str) -> App:
    options = {"options": f"-c search_path={_schema(queue)}"}
    connector = PsycopgConnector(conninfo=POSTGRES_DSN, kwargs=options)
    return App(connector=connector)


def declare(app: App, queue: str, body: Any) -> Any:
    @app.task(name="noop", queue=queue)
    async def noop(n: int) -> None:
        body(n)

    return noop


async def _ensure_schema(queue: str) -> None:
    schema = _schema(queue)
    async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True) as conn:
        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{schema}"')
        cur = await conn.execute(
            "SELECT 1 FROM information_schema.tables "
            "WHERE table_schema = %s AND table_name = 'procrastinate_jobs'",
            (schema,),
        )
        installed = await cur.fetchone() is not None
    if not installed:
        app = make_app(queue)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()


class ProcrastinateProducer(Producer):
    def __init__(self, app: App, task: Any) -> None:
        self.app = app
        self.task = task

    async def enqueue(self, i: int) -> object:
        return await self.task.defer_async(n=i)

    async def close(self) -> None:
        await self.app.close_async()


class ProcrastinateCase(NetCase):
    case = "procrastinate"
    framework = "procrastinate"
    guarantees = "defer returns after the INSERT committed; finished jobs kept (default)"
    notes = ("LISTEN/NOTIFY on (default); one worker process, concurrency=C",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"concurrency={concurrency}"

    async def producer(self, queue: str) -> Producer:
        await _ensure_schema(queue)
        app = make_app(queue)
        await app.open_async()
        return ProcrastinateProducer(app, declare(app, queue, lambda n: None))

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def main() -> None:
            app = make_app(queue)
            declare(app, queue, counter.hit)
            async with app.open_async():
                counter.ready()
                await app.run_worker_async(
                    queues=[queue], concurrency=concurrency, install_signal_handlers=False
                )

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        async with await psycopg.AsyncConnection.connect(POSTGRES_DSN, autocommit=True) as conn:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{_schema(queues[0])}" CASCADE')


if __name__ == "__main__":
    ProcrastinateCase().main()
