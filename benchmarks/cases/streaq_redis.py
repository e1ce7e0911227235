"""streaq on Redis: `await noop.enqueue(i)`; worker `streaq.Worker(concurrency=C)`.

Runs in the streaq virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import anyio
from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from streaq import Worker


class StreaqProducer(Producer):
    def __init__(self, worker: Worker) -> None:
        self.worker = worker

        @worker.task(name="noop")
        async def noop(n: int) -> None:
            pass

        self.noop = noop

    async def enqueue(self, i: int) -> object:
        return await self.noop.enqueue(i)

    async def close(self) -> None:
        await self.worker.__aexit__(None, None, None)


class StreaqCase(NetCase):
    case = "streaq"
    framework = "streaq"
    guarantees = "enqueue returns after the Lua script that stores the task (Redis durability)"
    notes = ("'ready' = Worker.run_async() reported started (consumers and producer running)",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"concurrency={concurrency}"

    def make_worker(self, queue: str, concurrency: int = 16) -> Worker:
        return Worker(
            redis_url=REDIS_URL,
            queue_name=queue,
            concurrency=concurrency,
            handle_signals=False,
        )

    async def producer(self, queue: str) -> Producer:
        worker = self.make_worker(queue)
        producer = StreaqProducer(worker)
        await worker.__aenter__()
        return producer

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        worker = self.make_worker(queue, concurrency)

        @worker.task(name="noop")
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            async with anyio.create_task_group() as tg:
                await tg.start(worker.run_async)
                counter.ready()

        anyio.run(main)

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    StreaqCase().main()
