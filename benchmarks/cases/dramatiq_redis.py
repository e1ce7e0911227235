"""Dramatiq, RedisBroker: `noop.send(i)` (synchronous); worker `dramatiq.Worker(worker_threads=C)`.

Runs in the dramatiq virtualenv. See `_common.NetCase` for the phases and what is printed.
The actor is `async def`, run by Dramatiq's `AsyncIO` middleware (one event-loop thread that the
worker threads hand each call to). The broker namespace embeds the queue name so every key the
run creates is found by the clean-up.
"""

from __future__ import annotations

import threading

import dramatiq
from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from dramatiq.brokers.redis import RedisBroker
from dramatiq.middleware import AsyncIO


def make_broker(queue: str) -> RedisBroker:
    broker = RedisBroker(url=REDIS_URL, namespace=f"dramatiq-{queue}")
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    return broker


def declare(broker: RedisBroker, queue: str, body: object) -> dramatiq.Actor:  # type: ignore[type-arg]
    async def noop(n: int) -> None:
        body(n)  # type: ignore[operator]

    return dramatiq.actor(noop, broker=broker, queue_name=queue, actor_name="noop")


class DramatiqProducer(Producer):
    sync = True

    def __init__(self, broker: RedisBroker, queue: str) -> None:
        self.broker = broker
        self.noop = declare(broker, queue, lambda n: None)

    def enqueue_sync(self, i: int) -> object:
        return self.noop.send(i)

    async def close(self) -> None:
        self.broker.close()


class DramatiqRedisCase(NetCase):
    case = "dramatiq"
    framework = "dramatiq"
    guarantees = "send() returns after the Lua enqueue script ran (Redis durability)"
    notes = (
        "Dramatiq's enqueue is synchronous: no concurrent-enqueue figure",
        "default middleware kept (retries, time limit, age limit, ...), plus AsyncIO",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"worker_threads={concurrency}"

    async def producer(self, queue: str) -> Producer:
        return DramatiqProducer(make_broker(queue), queue)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        broker = make_broker(queue)
        declare(broker, queue, counter.hit)
        worker = dramatiq.Worker(broker, worker_threads=concurrency)
        worker.start()
        counter.ready()
        threading.Event().wait()

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    DramatiqRedisCase().main()
