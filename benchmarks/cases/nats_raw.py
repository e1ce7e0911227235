"""Raw nats-py JetStream, no framework (the ceiling).

Enqueue = `await js.publish(subject, b"<i>")` into a work-queue stream (file storage); the
worker is a `fetch(100)` loop on a durable pull consumer that calls a no-op `async def` per
message and acks it (not waited for).

Runs in the nats-py virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio

import nats
import nats.errors
from _common import NATS_URL, JobCounter, NetCase, Producer, nats_delete_streams
from nats.js.api import RetentionPolicy, StreamConfig


class RawProducer(Producer):
    def __init__(self, nc: nats.NATS, subject: str) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.subject = subject

    async def enqueue(self, i: int) -> object:
        return await self.js.publish(self.subject, str(i).encode())

    async def close(self) -> None:
        await self.nc.close()


class NatsRawCase(NetCase):
    case = "nats-py-raw"
    framework = "nats-py"
    guarantees = "publish waits for JetStream's PubAck (file storage, work-queue stream); ack "
    "after each message (not waited for)"
    notes = ("no framework: messages are processed one after another; fetch(batch=100)",)

    def concurrency_label(self, concurrency: int) -> str:
        return "sequential loop, fetch(100)"

    async def producer(self, queue: str) -> Producer:
        nc = await nats.connect(NATS_URL)
        await nc.jetstream().add_stream(
            StreamConfig(name=queue, subjects=[queue], retention=RetentionPolicy.WORK_QUEUE)
        )
        return RawProducer(nc, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def noop(n: int) -> None:
            counter.hit(n)

        async def main() -> None:
            nc = await nats.connect(NATS_URL)
            js = nc.jetstream()
            await js.add_stream(
                StreamConfig(name=queue, subjects=[queue], retention=RetentionPolicy.WORK_QUEUE)
            )
            sub = await js.pull_subscribe(queue, "worker", stream=queue)
            counter.ready()
            while True:
                try:
                    messages = await sub.fetch(100, timeout=1)
                except nats.errors.TimeoutError:
                    continue
                for message in messages:
                    await noop(int(message.data))
                    await message.ack()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        await nats_delete_streams(queues)


if __name__ == "__main__":
    NatsRawCase().main()
