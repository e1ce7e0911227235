"""An app whose target factory starts a worker in the command's own event loop (in-memory)."""

from __future__ import annotations

import asyncio

from repid import Connection, InMemoryMessageBroker, Repid, Router, Worker

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()
background: list[asyncio.Task[object]] = []


@router.actor(queue="emails")
async def send_email(to: str) -> None:
    pass


async def with_running_worker() -> Router:
    await app.connection.connect()
    worker = Worker(routers=[router], tasks_limit=3, handle_signals=[], _connection=app.connection)
    background.append(asyncio.create_task(worker.run()))
    for _ in range(500):  # until it has registered itself
        if await app.connection.live_workers():
            break
        await asyncio.sleep(0.01)
    return router
