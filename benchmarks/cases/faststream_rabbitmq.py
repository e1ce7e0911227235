"""FastStream, RabbitMQ: `await broker.publish(i, queue=q)`; subscriber on a channel with
`prefetch_count=C`.

Runs in the faststream virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

from _common import AMQP_URL, JobCounter, NetCase, Producer, rabbitmq_delete
from faststream.rabbit import Channel, RabbitBroker, RabbitQueue


class FastStreamProducer(Producer):
    def __init__(self, broker: RabbitBroker, queue: str) -> None:
        self.broker = broker
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        return await self.broker.publish(i, queue=self.queue)

    async def close(self) -> None:
        await self.broker.stop()


class FastStreamRabbitCase(NetCase):
    case = "faststream"
    framework = "faststream"
    guarantees = (
        "publisher confirms ON (FastStream's default channel), messages NOT persistent "
        "(publish(persist=False) default); durable queue; ack after the handler"
    )
    notes = ("concurrency = the subscriber channel's prefetch_count",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"prefetch_count={concurrency}"

    async def producer(self, queue: str) -> Producer:
        broker = RabbitBroker(AMQP_URL, logger=None)
        await broker.connect()
        await broker.declare_queue(RabbitQueue(queue, durable=True))
        return FastStreamProducer(broker, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = RabbitBroker(AMQP_URL, logger=None)

        @broker.subscriber(
            RabbitQueue(queue, durable=True), channel=Channel(prefetch_count=concurrency)
        )
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            await broker.start()
            counter.ready()
            await asyncio.Event().wait()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        await rabbitmq_delete(queues)


if __name__ == "__main__":
    FastStreamRabbitCase().main()
