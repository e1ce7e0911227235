"""FastStream, Kafka: `await broker.publish(i, topic=t)`; subscriber with `ack_policy=ACK`
(auto-commit off, offset committed after the handler) and `max_workers=C`.

Runs in the faststream virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

from _common import KAFKA_BOOTSTRAP, JobCounter, NetCase, Producer, kafka_delete_topics
from faststream import AckPolicy
from faststream.kafka import KafkaBroker


class FastStreamProducer(Producer):
    def __init__(self, broker: KafkaBroker, topic: str) -> None:
        self.broker = broker
        self.topic = topic

    async def enqueue(self, i: int) -> object:
        return await self.broker.publish(i, topic=self.topic)

    async def close(self) -> None:
        await self.broker.stop()


class FastStreamKafkaCase(NetCase):
    case = "faststream"
    framework = "faststream"
    guarantees = (
        "publish waits for the broker's ack (aiokafka send_and_wait, acks=1 default); offsets "
        "committed after the handler (AckPolicy.ACK, auto-commit off)"
    )
    notes = (
        "with AckPolicy.ACK, max_workers gives concurrency between partitions only; the topic "
        "has 1 partition (auto-created), like repid's default",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_workers={concurrency}, AckPolicy.ACK"

    async def producer(self, queue: str) -> Producer:
        broker = KafkaBroker(KAFKA_BOOTSTRAP, logger=None)
        await broker.connect()
        return FastStreamProducer(broker, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = KafkaBroker(KAFKA_BOOTSTRAP, logger=None)

        @broker.subscriber(
            queue,
            group_id=f"{queue}-group",
            auto_offset_reset="earliest",
            ack_policy=AckPolicy.ACK,
            max_workers=concurrency,
        )
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            await broker.start()
            counter.ready()
            await asyncio.Event().wait()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        await kafka_delete_topics(queues)


if __name__ == "__main__":
    FastStreamKafkaCase().main()
