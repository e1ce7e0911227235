"""taskiq, InMemoryBroker: N sequential `await noop.kiq(i)`, then wait until the N-th job has run.

Runs in the taskiq virtualenv. Prints one JSON line (see `_common.CaseResult`).

What the phases mean here (there is no queue and no worker):
  `InMemoryBroker.kick()` (default `await_inplace=False`) does not store the message: it parses
  nothing yet, it wraps the receiver callback for that message in `asyncio.create_task()` and
  returns. `kiq()` never suspends, so no job runs during the enqueue loop (the script checks and
  reports `ran_during_enqueue`); the pending tasks sit in the event loop's ready queue.
  enqueue  N sequential `await noop.kiq(i)` calls = build, serialize and kick the message, and
           create one asyncio task per message.
  drain    the event loop running those N tasks (decode, validate args, call the actor, store the
           result in the in-memory result backend) until the N-th job has run. Concurrency is
           unbounded: all N tasks exist at once; `max_async_tasks` applies only to `listen()`,
           which the in-memory broker does not use.
  With `InMemoryBroker(await_inplace=True)` the job would run inside `kiq()` and enqueue + drain
  would collapse into one figure; the default is what this case measures.
"""

from __future__ import annotations

import asyncio
import time

from _common import CaseResult, fail, parse_args, peak_rss_mb, version_of
from taskiq import InMemoryBroker


async def main() -> None:
    args = parse_args(__doc__ or "", default_concurrency=0)
    n: int = args.n

    broker = InMemoryBroker()
    count = 0
    done = asyncio.Event()

    @broker.task(task_name="noop")
    async def noop(n: int) -> None:
        nonlocal count
        count += 1
        if count == args.n:
            done.set()

    await broker.startup()
    rss_after_setup = peak_rss_mb()

    t0 = time.perf_counter()
    for i in range(n):
        await noop.kiq(i)
    t1 = time.perf_counter()
    ran_during_enqueue = count

    try:
        async with asyncio.timeout(args.timeout):
            await done.wait()
    except TimeoutError:
        fail(f"timed out after {args.timeout:.0f}s waiting for the N-th job", jobs_run=count)
    t2 = time.perf_counter()
    await broker.wait_all()
    await broker.shutdown()

    CaseResult(
        case="taskiq",
        framework="taskiq",
        version=version_of("taskiq"),
        n=n,
        concurrency="unbounded (one asyncio task per kiq)",
        enqueue_s=t1 - t0,
        drain_s=t2 - t1,
        total_s=t2 - t0,
        peak_rss_mb=peak_rss_mb(),
        rss_after_setup_mb=rss_after_setup,
        jobs_run=count,
        ran_during_enqueue=ran_during_enqueue,
        notes=[
            "taskiq InMemoryBroker has no queue or worker: kiq() spawns one asyncio task per job "
            "(enqueue), the event loop then runs them (drain); concurrency is unbounded"
        ],
    ).emit()


if __name__ == "__main__":
    asyncio.run(main())
