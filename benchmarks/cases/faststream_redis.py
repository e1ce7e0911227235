"""FastStream, Redis list subscriber: `await broker.publish(i, list=queue)`; subscriber with
`max_workers=C`.

Runs in the faststream virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

from _common import CHUNK, REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from faststream.redis import RedisBroker


class FastStreamProducer(Producer):
    def __init__(self, broker: RedisBroker, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        return await self.broker.publish(i, list=self.queue)

    async def close(self) -> None:
        await self.broker.stop()


class FastStreamRedisCase(NetCase):
    case = "faststream"
    framework = "faststream"
    guarantees = "publish returns after RPUSH (Redis durability); the list pop is the delivery"
    notes = (
        "list subscriber: a popped message is gone (at-most-once if the worker dies)",
        "producer RedisBroker(max_connections=500): with redis-py's default pool (100) the "
        "gathered chunks fail with MaxConnectionsError",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_workers={concurrency}"

    async def producer(self, queue: str) -> Producer:
        # redis-py 8's asyncio pool refuses a 101st connection (MaxConnectionsError) instead of
        # waiting; 500 lets one gathered chunk of 500 publishes through.
        broker = RedisBroker(REDIS_URL, max_connections=CHUNK)
        await broker.connect()
        return FastStreamProducer(broker, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = RedisBroker(REDIS_URL, logger=None)

        @broker.subscriber(list=queue, max_workers=concurrency)
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            await broker.start()
            counter.ready()
            await asyncio.Event().wait()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    FastStreamRedisCase().main()
