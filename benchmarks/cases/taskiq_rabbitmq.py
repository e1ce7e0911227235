"""taskiq-aio-pika, RabbitMQ: `await noop.kiq(i)`; worker = taskiq receiver,
`max_async_tasks=C`, broker `qos=C`.

Runs in the taskiq-aio-pika virtualenv. See `_common.NetCase` for the phases and what is printed.
The exchange and the queues are named after the run's queue, and deleted by the clean-up.
"""

from __future__ import annotations

import asyncio

from _common import AMQP_URL, JobCounter, NetCase, Producer, rabbitmq_delete
from taskiq.api import run_receiver_task
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType


def make_broker(queue: str, qos: int = 10) -> AioPikaBroker:
    return AioPikaBroker(
        AMQP_URL,
        qos=qos,
        exchange=Exchange(name=queue),
        # taskiq-aio-pika declares quorum queues unless told: this is the classic-queue case
        # (taskiq_rabbitmq_quorum.py is the quorum one).
        task_queues=[Queue(name=queue, type=QueueType.CLASSIC)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter", type=QueueType.CLASSIC),
    )


class TaskiqProducer(Producer):
    def __init__(self, broker: AioPikaBroker) -> None:
        self.broker = broker

        @broker.task(task_name="noop")
        async def noop(n: int) -> None:
            pass

        self.noop = noop

    async def enqueue(self, i: int) -> object:
        return await self.noop.kiq(i)

    async def close(self) -> None:
        await self.broker.shutdown()


class TaskiqRabbitCase(NetCase):
    case = "taskiq-aio-pika"
    framework = "taskiq-aio-pika"
    guarantees = (
        "publisher confirms ON (aio-pika channel default), messages persistent "
        "(delivery_mode=2), durable queue; ack when the result is saved"
    )
    notes = ("qos (prefetch) = max_async_tasks = the concurrency; no result backend",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_async_tasks={concurrency}, qos={concurrency}"

    async def producer(self, queue: str) -> Producer:
        broker = make_broker(queue)
        producer = TaskiqProducer(broker)
        await broker.startup()
        return producer

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = make_broker(queue, qos=concurrency)

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
        dead = [f"{name}.dead_letter" for name in queues]
        await rabbitmq_delete([*queues, *dead], exchanges=queues)


if __name__ == "__main__":
    TaskiqRabbitCase().main()
