"""A worker process for the crash tests: each run of `record` appends its job number to a file.

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

    worker = Worker([router], tasks_limit=10, handle_signals=[], _connection=conn)
    print("ready", flush=True)
    await worker.run()


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:5]))
