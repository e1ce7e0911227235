"""Raw aio-pika, no framework (a reference, not a peer).

Enqueue = `await exchange.publish(Message(b"<i>", delivery_mode=PERSISTENT), routing_key=queue)`
on a channel with publisher confirms (aio-pika's default), into a durable queue: the same
durability as repid's default. The worker consumes with prefetch = the concurrency, calls a
no-op `async def` per message and acknowledges it after.

Runs in the aio-pika virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aio_pika
from _common import AMQP_URL, JobCounter, NetCase, Producer, rabbitmq_delete


class RawProducer(Producer):
    def __init__(self, connection: aio_pika.abc.AbstractConnection, exchange: Any, queue: str):
        self.connection = connection
        self.exchange = exchange
        self.queue = queue

    async def enqueue(self, i: int) -> object:
        message = aio_pika.Message(str(i).encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT)
        return await self.exchange.publish(message, routing_key=self.queue)

    async def close(self) -> None:
        await self.connection.close()


class AioPikaRawCase(NetCase):
    case = "aio-pika-raw"
    framework = "aio-pika"
    guarantees = (
        "publish waits for the publisher confirm; persistent message, durable queue; ack after "
        "the handler"
    )
    notes = ("no framework: prefetch = the concurrency, a no-op callback, then message.ack()",)

    def concurrency_label(self, concurrency: int) -> str:
        return f"prefetch_count={concurrency}"

    async def producer(self, queue: str) -> Producer:
        connection = await aio_pika.connect(AMQP_URL)
        channel = await connection.channel(publisher_confirms=True)
        await channel.declare_queue(queue, durable=True)
        return RawProducer(connection, channel.default_exchange, queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def noop(n: int) -> None:
            counter.hit(n)

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            await noop(int(message.body))
            await message.ack()

        async def main() -> None:
            connection = await aio_pika.connect(AMQP_URL)
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=concurrency)
            declared = await channel.declare_queue(queue, durable=True)
            await declared.consume(on_message)
            counter.ready()
            await asyncio.Future()

        asyncio.run(main())

    async def cleanup(self, queues: list[str]) -> None:
        await rabbitmq_delete(queues)


if __name__ == "__main__":
    AioPikaRawCase().main()
