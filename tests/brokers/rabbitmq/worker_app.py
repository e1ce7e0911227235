"""A worker process for the crash and cancel tests: actor runs are logged to a file.

`record` appends its job number; `endless` logs "started" and, when cancelled, "cancelled".

Run as `python worker_app.py <dsn> <prefix> <queue> <log path>`; it prints "ready" once consuming.
"""

from __future__ import annotations

import asyncio
import os
import sys

from repid import Connection, Router, Worker
from repid.brokers.rabbitmq import RabbitMessageBroker


async def main(dsn: str, prefix: str, queue: str, log_path: str) -> None:
    conn = Connection(RabbitMessageBroker(dsn, prefix=prefix))
    await conn.connect()
    router = Router()
    log = open(log_path, "a", buffering=1)  # noqa: SIM115, ASYNC230 - one line per run, flushed

    @router.actor(queue=queue)
    async def record(n: int) -> None:
        await asyncio.sleep(0.02)  # work in progress when the kill lands
        log.write(f"{n}\n")
        os.fsync(log.fileno())

    @router.actor(queue=queue)
    async def endless() -> None:
        log.write("started\n")
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            log.write("cancelled\n")
            raise

    worker = Worker([router], tasks_limit=10, handle_signals=[], _connection=conn)
    print("ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
