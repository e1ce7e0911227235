"""taskiq-nats, NATS JetStream: `await noop.kiq(i)`; worker = taskiq receiver on a
`PullBasedJetStreamBroker` (`pull_consume_batch=100`), `max_async_tasks=C`.

Runs in the taskiq-nats virtualenv. See `_common.NetCase` for the phases and what is printed.
The stream and the durable consumer are named after the run's queue, deleted by the clean-up.
"""

from __future__ import annotations

import asyncio

from _common import NATS_URL, JobCounter, NetCase, Producer, nats_delete_streams
from nats.js.api import StreamConfig
from taskiq.api import run_receiver_task
from taskiq_nats import PullBasedJetStreamBroker


def make_broker(queue: str) -> PullBasedJetStreamBroker:
    return PullBasedJetStreamBroker(
        NATS_URL,
        subject=queue,
        stream_name=queue,
        durable=f"{queue}-worker",
        stream_config=StreamConfig(name=queue, subjects=[queue]),
        pull_consume_batch=100,
        pull_consume_timeout=1.0,
    )


class TaskiqProducer(Producer):
    def __init__(self, broker: PullBasedJetStreamBroker) -> None:
        self.broker = broker

        @broker.task(task_name="noop")
        async def noop(n: int) -> None:
            pass

        self.noop = noop

    async def enqueue(self, i: int) -> object:
        return await self.noop.kiq(i)

    async def close(self) -> None:
        await self.broker.shutdown()


class TaskiqNatsCase(NetCase):
    case = "taskiq-nats"
    framework = "taskiq-nats"
    guarantees = "kiq waits for JetStream's PubAck (file storage); ack when the result is saved"
    notes = ("pull_consume_batch=100; no result backend",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_async_tasks={concurrency}, pull batch 100"

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
        await nats_delete_streams(queues)


if __name__ == "__main__":
    TaskiqNatsCase().main()
