"""persist-queue, SQLiteAckQueue: `queue.put(i)` (synchronous); worker: C threads, each
`item = queue.get()`, the no-op job, `queue.ack(item)`, in a fresh process on the same file.

Runs in the persist-queue virtualenv. See `_common.NetCase` for the phases and what is printed.
persist-queue is a queue library, not a job framework: the worker loop here is the whole
"framework" (no routing, no argument validation). Its SQLite file is WAL with SQLite's default
`synchronous` (FULL); `get()` marks the row unacked, `ack()` marks it acked (at-least-once
within the queue object). Every run has its own directory, deleted by the clean-up.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading

from _common import JobCounter, NetCase, Producer
from persistqueue import SQLiteAckQueue


def directory(queue: str) -> str:
    return os.path.join(tempfile.gettempdir(), f"{queue.split('-', 1)[0]}-persistqueue")


def make_queue(queue: str) -> SQLiteAckQueue:
    return SQLiteAckQueue(directory(queue), name=queue.replace("-", "_"), multithreading=True)


class PersistQueueProducer(Producer):
    sync = True

    def __init__(self, queue: SQLiteAckQueue) -> None:
        self.queue = queue

    def enqueue_sync(self, i: int) -> object:
        return self.queue.put(i)


class PersistQueueSqliteCase(NetCase):
    case = "persist-queue"
    framework = "persist-queue"
    guarantees = (
        "put() returns after its INSERT committed (WAL, synchronous=FULL); get() marks the row "
        "unacked, ack() after the job marks it acked"
    )
    notes = (
        "persist-queue's put() is synchronous: no concurrent-enqueue figure",
        "a queue library: the worker is C threads looping get / no-op / ack",
    )

    def concurrency_label(self, concurrency: int) -> str:
        return f"{concurrency} threads"

    async def producer(self, queue: str) -> Producer:
        return PersistQueueProducer(make_queue(queue))

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        q = make_queue(queue)

        def loop() -> None:
            while True:
                item = q.get()
                counter.hit(item)
                q.ack(item)

        counter.ready()
        for _ in range(concurrency):
            threading.Thread(target=loop, daemon=True).start()
        threading.Event().wait()

    async def cleanup(self, queues: list[str]) -> None:
        shutil.rmtree(directory(queues[0]), ignore_errors=True)


if __name__ == "__main__":
    PersistQueueSqliteCase().main()
