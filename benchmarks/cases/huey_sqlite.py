"""huey, SqliteHuey: `noop(i)` (synchronous: calling a task enqueues it); consumer
`Consumer(huey, workers=C, worker_type="thread")` in a fresh process on the same file.

Runs in the huey virtualenv. See `_common.NetCase` for the phases and what is printed. huey's
tasks are plain functions (no `async def`), as Celery's. Its SQLite storage is WAL with
SQLite's default `synchronous` (FULL), and a consumer *deletes* a task when it dequeues it (a
killed consumer loses what it held). Every run has its own file, deleted by the clean-up.
"""

from __future__ import annotations

import threading
from typing import Any

from _common import JobCounter, NetCase, Producer, sqlite_file, sqlite_remove
from huey import SqliteHuey
from huey.consumer import Consumer


def make_huey(queue: str) -> SqliteHuey:
    return SqliteHuey(name=queue, filename=sqlite_file(queue.split("-", 1)[0], "huey"))


def declare(huey: SqliteHuey, body: Any) -> Any:
    @huey.task(name="noop")
    def noop(n: int) -> None:
        body(n)

    return noop


class HueyProducer(Producer):
    sync = True

    def __init__(self, huey: SqliteHuey) -> None:
        self.huey = huey
        self.noop = declare(huey, lambda n: None)

    def enqueue_sync(self, i: int) -> object:
        return self.noop(i)

    async def close(self) -> None:
        self.huey.storage.close()


class HueySqliteCase(NetCase):
    case = "huey"
    framework = "huey"
    guarantees = (
        "the task call returns after its INSERT committed (WAL, synchronous=FULL); the consumer "
        "deletes a task when it dequeues it, before running it"
    )
    notes = (
        "huey's enqueue is synchronous: no concurrent-enqueue figure",
        "consumer defaults kept (idle polling from 0.1 s, backing off up to 10 s)",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"workers={concurrency} (threads)"

    async def producer(self, queue: str) -> Producer:
        return HueyProducer(make_huey(queue))

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        huey = make_huey(queue)
        declare(huey, counter.hit)
        consumer = Consumer(huey, workers=concurrency, worker_type="thread")
        counter.ready()
        consumer.run()
        threading.Event().wait()

    async def cleanup(self, queues: list[str]) -> None:
        sqlite_remove(sqlite_file(queues[0].split("-", 1)[0], "huey"))


if __name__ == "__main__":
    HueySqliteCase().main()
