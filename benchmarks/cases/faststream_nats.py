"""FastStream, NATS JetStream: `await broker.publish(i, subject, stream=s)`; a durable pull
subscriber (`PullSub(batch_size=100)`) with `ack_policy=AckPolicy.ACK` (ack after the handler)
and `max_workers=C`.

Runs in the faststream-nats virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

from _common import NATS_URL, JobCounter, NetCase, Producer, nats_delete_streams
from faststream import AckPolicy
from faststream.nats import JStream, NatsBroker, PullSub


class FastStreamProducer(Producer):
    def __init__(self, broker: NatsBroker, subject: str) -> None:
        self.broker = broker
        self.subject = subject

    async def enqueue(self, i: int) -> object:
        return await self.broker.publish(i, self.subject, stream=self.subject)

    async def close(self) -> None:
        await self.broker.stop()


def _stream(queue: str) -> JStream:
    return JStream(name=queue, subjects=[queue])


class FastStreamNatsCase(NetCase):
    case = "faststream"
    framework = "faststream"
    guarantees = (
        "publish waits for JetStream's PubAck (file storage); ack after the handler (AckPolicy.ACK)"
    )
    notes = ("a durable pull subscriber, batch_size=100",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_workers={concurrency}, PullSub(batch_size=100), AckPolicy.ACK"

    async def producer(self, queue: str) -> Producer:
        broker = NatsBroker(NATS_URL, logger=None)
        await broker.connect()
        await broker._connection.jetstream().add_stream(name=queue, subjects=[queue])
        return FastStreamProducer(broker, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = NatsBroker(NATS_URL, logger=None)

        @broker.subscriber(
            queue,
            stream=_stream(queue),
            durable=f"{queue}-worker",
            pull_sub=PullSub(batch_size=100),
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
        await nats_delete_streams(queues)


if __name__ == "__main__":
    FastStreamNatsCase().main()
