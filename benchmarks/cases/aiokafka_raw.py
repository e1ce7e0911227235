"""Raw aiokafka, no framework (the ceiling).

Enqueue = `await producer.send_and_wait(topic, b"<i>")`; the worker is a `getmany()` loop that
calls a no-op `async def` per record and commits after each batch.

Runs in the aiokafka virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

from _common import KAFKA_BOOTSTRAP, JobCounter, NetCase, Producer, kafka_delete_topics
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer


class RawProducer(Producer):
    def __init__(self, producer: AIOKafkaProducer, topic: str) -> None:
        self.producer = producer
        self.topic = topic

    async def enqueue(self, i: int) -> object:
        return await self.producer.send_and_wait(self.topic, str(i).encode())

    async def close(self) -> None:
        await self.producer.stop()


class AiokafkaRawCase(NetCase):
    case = "aiokafka-raw"
    framework = "aiokafka"
    guarantees = (
        "send_and_wait waits for the broker's ack (acks=1 default); offsets committed after "
        "each processed batch (auto-commit off)"
    )
    notes = (
        "no framework: records are processed one after another (a no-op needs no concurrency); "
        "getmany(max_records=500)",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return "sequential loop, commit per batch"

    async def producer(self, queue: str) -> Producer:
        producer = AIOKafkaProducer(bootstrap_servers=KAFKA_BOOTSTRAP)
        await producer.start()
        return RawProducer(producer, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            consumer = AIOKafkaConsumer(
                queue,
                bootstrap_servers=KAFKA_BOOTSTRAP,
                group_id=f"{queue}-group",
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            await consumer.start()
            counter.ready()
            while True:
                batches = await consumer.getmany(timeout_ms=1000, max_records=500)
                for records in batches.values():
                    for record in records:
                        await noop(int(record.value))
                if batches:
                    await consumer.commit()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        await kafka_delete_topics(queues)


if __name__ == "__main__":
    AiokafkaRawCase().main()
