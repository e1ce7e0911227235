"""Celery, Redis transport: `noop.delay(i)` (synchronous); worker `--pool threads --concurrency C`.

Runs in the celery virtualenv. See `_common.NetCase` for the phases and what is printed.
Celery has no `async def` tasks: the task is a plain `def`. The worker runs in this process via
`app.worker_main()`; 'ready' is Celery's `worker_ready` signal.
"""

from __future__ import annotations

import os

from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from celery import Celery
from celery.signals import worker_ready

BROKER_URL = os.environ.get("REPID_BENCH_CELERY_BROKER", REDIS_URL)


def make_app(queue: str) -> Celery:
    app = Celery("bench", broker=BROKER_URL)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        broker_connection_retry_on_startup=True,
    )
    return app


class CeleryProducer(Producer):
    sync = True

    def __init__(self, app: Celery) -> None:
        self.app = app

        @app.task(name="noop")
        def noop(n: int) -> None:
            pass

        self.noop = noop

    def enqueue_sync(self, i: int) -> object:
        return self.noop.delay(i)

    async def close(self) -> None:
        self.app.close()


class CeleryCase(NetCase):
    case = "celery"
    framework = "celery"
    guarantees = "delay() returns after LPUSH to the queue list (Redis durability); ack on receipt"
    notes = (
        "Celery has no async tasks: a plain def task, threads pool; enqueue is synchronous "
        "(no concurrent-enqueue figure)",
        "worker started with --without-gossip --without-mingle --without-heartbeat and remote "
        "control off (no pidbox/event traffic); default prefetch multiplier (4)",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"threads pool, concurrency={concurrency}"

    async def producer(self, queue: str) -> Producer:
        return CeleryProducer(make_app(queue))

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        app = make_app(queue)

        @app.task(name="noop")
        def noop(n: int) -> None:
            counter.hit(n)

        @worker_ready.connect
        def on_ready(**kwargs: object) -> None:
            counter.ready()

        app.worker_main(
            [
                "worker",
                "--pool=threads",
                f"--concurrency={concurrency}",
                "--loglevel=WARNING",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                queue,
            ]
        )

    async def cleanup(self, queues: list[str]) -> None:
        redis_delete_matching([f"*{q}*" for q in queues])


if __name__ == "__main__":
    CeleryCase().main()
