"""Dramatiq, StubBroker: N sequential `noop.send(i)`, then one Worker drains the full queue.

Runs in the dramatiq virtualenv. Prints one JSON line (see `_common.CaseResult`).

The actor is `async def`, so the broker gets Dramatiq's `AsyncIO` middleware: the Worker's
threads hand each call to one event-loop thread and block until it finishes, so concurrency is
the number of worker threads. The default middleware (age limit, time limit, retries, ...) stays.

Phases:
  enqueue  N sequential `noop.send(i)` calls (synchronous: Dramatiq has no awaitable enqueue).
  drain    from creating `dramatiq.Worker(broker, worker_threads=C)` and starting it until
           `broker.join(queue)` returns and the N-th job has run.
"""

from __future__ import annotations

import threading
import time

import dramatiq
from _common import CaseResult, fail, parse_args, peak_rss_mb, version_of
from dramatiq.brokers.stub import StubBroker
from dramatiq.middleware import AsyncIO

QUEUE = "bench"


def main() -> None:
    args = parse_args(__doc__ or "", default_concurrency=100)
    n: int = args.n

    broker = StubBroker()
    broker.add_middleware(AsyncIO())
    dramatiq.set_broker(broker)
    count = 0
    done = threading.Event()

    # All calls run on the single AsyncIO event-loop thread, so the counter needs no lock.
    @dramatiq.actor(broker=broker, queue_name=QUEUE, actor_name="noop")
    async def noop(n: int) -> None:
        nonlocal count
        count += 1
        if count == args.n:
            done.set()

    broker.declare_queue(QUEUE)
    rss_after_setup = peak_rss_mb()

    t0 = time.perf_counter()
    for i in range(n):
        noop.send(i)
    t1 = time.perf_counter()
    ran_during_enqueue = count

    worker = dramatiq.Worker(broker, worker_threads=args.concurrency)
    worker.start()
    broker.join(QUEUE, timeout=int(args.timeout * 1000))
    if not done.wait(args.timeout):
        fail("timed out waiting for the N-th job", jobs_run=count)
    t2 = time.perf_counter()
    worker.stop()

    CaseResult(
        case="dramatiq",
        framework="dramatiq",
        version=version_of("dramatiq"),
        n=n,
        concurrency=f"worker_threads={args.concurrency}",
        enqueue_s=t1 - t0,
        drain_s=t2 - t1,
        total_s=t2 - t0,
        peak_rss_mb=peak_rss_mb(),
        rss_after_setup_mb=rss_after_setup,
        jobs_run=count,
        ran_during_enqueue=ran_during_enqueue,
        notes=[
            "dramatiq enqueue is synchronous actor.send(); async actor runs via AsyncIO middleware"
        ],
    ).emit()


if __name__ == "__main__":
    main()
