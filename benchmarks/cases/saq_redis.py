"""SAQ on Redis: `await queue.enqueue("noop", n=i)`; worker `saq.Worker(concurrency=C)`.

Runs in the saq virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio
from typing import Any

from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from saq import Queue, Worker


class SaqProducer(Producer):
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        return await self.queue.enqueue("noop", n=i)

    async def close(self) -> None:
        await self.queue.disconnect()


class SaqCase(NetCase):
    case = "saq"
    framework = "saq"
    guarantees = "enqueue returns after the Lua script that stores the job (Redis durability)"
    notes = ("SAQ functions take keyword arguments: the job is noop(ctx, *, n)",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"concurrency={concurrency}"

    async def producer(self, queue: str) -> Producer:
        q = Queue.from_url(REDIS_URL, name=queue)
        await q.connect()
        return SaqProducer(q)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def noop(ctx: dict[str, Any], *, n: int) -> None:
            counter.hit(n)

        async def startup(ctx: dict[str, Any]) -> None:
            counter.ready()

        async def main() -> None:
            q = Queue.from_url(REDIS_URL, name=queue)
            await q.connect()
            worker = Worker(q, functions=[("noop", noop)], concurrency=concurrency, startup=startup)
            await worker.start()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    SaqCase().main()
