"""The repid side of the network suites: one `NetCase` for any of repid's network brokers.

Runs with the project's interpreter (repid importable). `repid_redis.py`, `repid_rabbitmq.py` and
`repid_kafka.py` only say which broker to build.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from _common import JobCounter, NetCase, Producer

from repid import Connection, Job, Queue, Repid, Router, Worker


class RepidProducer(Producer):
    def __init__(self, app: Repid, queue: str) -> None:
        self.app = app
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        return await Job("noop", queue=self.queue, args={"n": i}).enqueue()

    async def close(self) -> None:
        await self.app.magic_disconnect()


class RepidNetCase(NetCase):
    """repid on the broker `make_broker(queue)` returns (the same for the driver and worker)."""

    case = "repid"
    framework = "repid"

    def __init__(self, make_broker: Callable[[str], Any], guarantees: str) -> None:
        self.make_broker = make_broker
        self.guarantees = guarantees

    def concurrency_label(self, concurrency: int) -> str:
        return f"tasks_limit={concurrency}"

    async def producer(self, queue: str) -> Producer:
        app = Repid(Connection(self.make_broker(queue)))
        await app.magic_connect()
        await Queue(queue).declare()
        return RepidProducer(app, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        router = Router()

        @router.actor(name="noop", queue=queue)
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            app = Repid(Connection(self.make_broker(queue)))
            await app.magic_connect()
            worker = Worker(routers=[router], tasks_limit=concurrency, handle_signals=[])
            counter.ready()
            await worker.run()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        app = Repid(Connection(self.make_broker(queues[0])))
        async with app.magic(auto_disconnect=True):
            for queue in queues:
                await Queue(queue).delete()


def run_id_of(queue: str) -> str:
    """The run's unique part of a queue name (`<run id>-<case>-<phase>`)."""
    return queue.split("-", 1)[0]
