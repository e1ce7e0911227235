"""Dramatiq, RabbitmqBroker: `noop.send(i)` (synchronous); `dramatiq.Worker(worker_threads=C)`.

Runs in the dramatiq virtualenv. See `_common.NetCase` for the phases and what is printed.
The actor is `async def`, run by Dramatiq's `AsyncIO` middleware.
"""

from __future__ import annotations

import threading

import dramatiq
import pika
from _common import AMQP_URL, JobCounter, NetCase, Producer
from dramatiq.brokers.rabbitmq import RabbitmqBroker
from dramatiq.middleware import AsyncIO


def make_broker() -> RabbitmqBroker:
    broker = RabbitmqBroker(url=AMQP_URL)
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    return broker


def declare(broker: RabbitmqBroker, queue: str, body: object) -> dramatiq.Actor:  # type: ignore[type-arg]
    async def noop(n: int) -> None:
        body(n)  # type: ignore[operator]

    return dramatiq.actor(noop, broker=broker, queue_name=queue, actor_name="noop")


class DramatiqProducer(Producer):
    sync = True

    def __init__(self, broker: RabbitmqBroker, queue: str) -> None:
        self.broker = broker
        self.noop = declare(broker, queue, lambda n: None)

    def enqueue_sync(self, i: int) -> object:
        return self.noop.send(i)

    async def close(self) -> None:
        self.broker.close()


class DramatiqRabbitCase(NetCase):
    case = "dramatiq"
    framework = "dramatiq"
    guarantees = (
        "publisher confirms OFF (RabbitmqBroker confirm_delivery=False default), messages "
        "persistent (delivery_mode=2), durable queue; ack after the actor"
    )
    notes = (
        "Dramatiq's enqueue is synchronous: no concurrent-enqueue figure",
        "default middleware kept (retries, time limit, age limit, ...), plus AsyncIO",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"worker_threads={concurrency}"

    async def producer(self, queue: str) -> Producer:
        return DramatiqProducer(make_broker(), queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = make_broker()
        declare(broker, queue, counter.hit)
        worker = dramatiq.Worker(broker, worker_threads=concurrency)
        worker.start()
        counter.ready()
        threading.Event().wait()

    async def cleanup(self, queues: list[str]) -> None:
        connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        try:
            channel = connection.channel()
            for name in queues:
                for suffix in ("", ".DQ", ".XQ"):
                    channel.queue_delete(name + suffix)
        finally:
            connection.close()


if __name__ == "__main__":
    DramatiqRabbitCase().main()
