"""Processes of the SQLite tests: `python -m tests.brokers.sqlite.sqlite_app produce|work ...`.

- `produce URL QUEUE COUNT`: enqueues `COUNT` jobs one at a time and prints each job's id once
  its `enqueue()` returned (so a test that SIGKILLs it knows which enqueues returned).
- `work URL QUEUE LEDGER LEASE [SLEEP_CAP]`: a worker whose `slow(tag, sleep)` actor appends
  "start <tag> <pid> <redelivered>" and "end <tag> <pid>" lines to `LEDGER`, sleeping
  `min(sleep, SLEEP_CAP)` seconds in between.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from repid import Connection, Job, MessageDependency, Router, SqliteMessageBroker, Worker


def _append(path: str, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


async def produce(url: str, queue: str, count: int) -> None:
    conn = Connection(SqliteMessageBroker(url))
    await conn.connect()
    for n in range(count):
        job = Job("slow", queue=queue, args={"tag": f"p{n}", "sleep": 0.0}, _connection=conn)
        await job.enqueue()
        sys.stdout.write(f"{job._last_id}\n")
        sys.stdout.flush()
    await conn.disconnect()


async def work(url: str, queue: str, ledger: str, lease: float, cap: float) -> None:
    router = Router()

    @router.actor(queue=queue)
    async def slow(message: MessageDependency, tag: str, sleep: float = 0.0) -> None:
        pid = os.getpid()
        _append(ledger, f"start {tag} {pid} {int(message.parameters.attempt)}")
        await asyncio.sleep(min(sleep, cap))
        _append(ledger, f"end {tag} {pid}")

    conn = Connection(SqliteMessageBroker(url, lease_duration=lease))
    await conn.connect()
    worker = Worker(
        [router], handle_signals=[signal.SIGTERM], graceful_shutdown_time=1.0, _connection=conn
    )
    _append(ledger, f"ready - {os.getpid()} 0")
    try:
        await worker.run()
    finally:
        await conn.disconnect()


if __name__ == "__main__":
    command, *args = sys.argv[1:]
    if command == "produce":
        asyncio.run(produce(args[0], args[1], int(args[2])))
    else:
        cap = float(args[4]) if len(args) > 4 else float("inf")
        asyncio.run(work(args[0], args[1], args[2], float(args[3]), cap))
