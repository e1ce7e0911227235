"""taskiq-redis, stream broker: `await noop.kiq(i)`; worker = taskiq receiver, max_async_tasks=C.

Runs in the taskiq-redis virtualenv. See `_common.NetCase` for the phases and what is printed.
`consumer_id="0"`: the consumer group reads the stream from its start, so the drain worker sees the
jobs enqueued before it started (taskiq's default "$" would skip them unless a producer had
created the group first).
"""

from __future__ import annotations

import asyncio

from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from taskiq.api import run_receiver_task
from taskiq_redis import RedisStreamBroker


def make_broker(queue: str) -> RedisStreamBroker:
    return RedisStreamBroker(REDIS_URL, queue_name=queue, consumer_id="0")


class TaskiqProducer(Producer):
    def __init__(self, broker: RedisStreamBroker) -> None:
        self.broker = broker

        @broker.task(task_name="noop")
        async def noop(n: int) -> None:
            pass

        self.noop = noop

    async def enqueue(self, i: int) -> object:
        return await self.noop.kiq(i)

    async def close(self) -> None:
        await self.broker.shutdown()


class TaskiqRedisCase(NetCase):
    case = "taskiq-redis"
    framework = "taskiq-redis"
    guarantees = "enqueue returns after XADD (Redis durability); acked after the result is saved"
    notes = ("RedisStreamBroker(consumer_id='0'), no result backend",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_async_tasks={concurrency}"

    async def producer(self, queue: str) -> Producer:
        broker = make_broker(queue)
        producer = TaskiqProducer(broker)
        await broker.startup()
        return producer

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = make_broker(queue)

        @broker.task(task_name="noop")
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            broker.is_worker_process = True
            await broker.startup()
            counter.ready()
            await run_receiver_task(broker, max_async_tasks=concurrency, run_startup=False)

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    TaskiqRedisCase().main()
