"""A worker process for the Kafka crash tests: records each finished job's number in a file.

Usage: python -m tests.brokers.kafka.worker_app BOOTSTRAP PREFIX QUEUE OUT_FILE TASKS
"""

from __future__ import annotations

import asyncio
import os
import sys

from repid import Connection, KafkaMessageBroker, Router, Worker


def main() -> None:
    bootstrap, prefix, queue, out_path, tasks = sys.argv[1:6]
    out = os.open(out_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    router = Router()

    @router.actor(queue=queue)
    async def work(n: int) -> None:
        await asyncio.sleep(0.002)
        os.write(out, f"{n}\n".encode())  # one append per job: lines never interleave

    conn = Connection(KafkaMessageBroker(bootstrap, topic_prefix=prefix, session_timeout=6.0))
    worker = Worker([router], tasks_limit=int(tasks), _connection=conn)
    asyncio.run(worker.run())


if __name__ == "__main__":
    main()
