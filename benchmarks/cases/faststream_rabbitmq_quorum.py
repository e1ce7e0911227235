"""FastStream, RabbitMQ quorum queue: the `faststream_rabbitmq.py` case with the queue declared
`RabbitQueue(queue_type=QueueType.QUORUM)`; subscriber channel `prefetch_count=C`.

Runs in the faststream virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

from _common import AMQP_URL, JobCounter, Producer
from faststream.rabbit import Channel, QueueType, RabbitBroker, RabbitQueue
from faststream_rabbitmq import FastStreamProducer, FastStreamRabbitCase


def quorum_queue(name: str) -> RabbitQueue:
    return RabbitQueue(name, durable=True, queue_type=QueueType.QUORUM)


class FastStreamQuorumCase(FastStreamRabbitCase):
    case = "faststream-quorum"
    guarantees = (
        "quorum queue (replicated, always persistent); publisher confirms ON (FastStream's "
        "default channel); ack after the handler"
    )

    async def producer(self, queue: str) -> Producer:
        broker = RabbitBroker(AMQP_URL, logger=None)
        await broker.connect()
        await broker.declare_queue(quorum_queue(queue))
        return FastStreamProducer(broker, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = RabbitBroker(AMQP_URL, logger=None)

        @broker.subscriber(quorum_queue(queue), channel=Channel(prefetch_count=concurrency))
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            await broker.start()
            counter.ready()
            await asyncio.Event().wait()

        asyncio.run(main())


if __name__ == "__main__":
    FastStreamQuorumCase().main()
