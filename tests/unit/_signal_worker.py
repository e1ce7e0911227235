"""A worker process for the signal tests: `python _signal_worker.py MODE GRACE_SECONDS`.

It enqueues two jobs on an in-memory broker and runs a one-lane worker. The actor prints
`started` when it begins; MODE says what it does then (`async-stuck` waits forever,
`async-finishes` returns after a moment, `sync-stuck` blocks its thread). In-memory state dies
with the process, so at the end it prints the runner's counters and the queue counts as JSON.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from repid import Connection, InMemoryMessageBroker, Job, Queue, Repid, Worker


async def main(mode: str, grace: float) -> None:
    broker = InMemoryMessageBroker()
    async with Repid(Connection(broker)).magic():
        worker = Worker(graceful_shutdown_time=grace, tasks_limit=1)

        if mode == "sync-stuck":

            @worker.actor(name="job")
            def sync_job() -> None:
                print("started", flush=True)
                time.sleep(30)

        else:

            @worker.actor(name="job")
            async def async_job() -> None:
                print("started", flush=True)
                if mode == "async-stuck":
                    await asyncio.Event().wait()
                for _ in range(30):
                    await asyncio.sleep(0.01)
                print("finished", flush=True)

        await Queue().declare()
        await Job("job").enqueue()
        await Job("job").enqueue()
        runner = await worker.run()
        report = {
            "processed": runner.processed,
            "succeeded": runner.succeeded,
            "failed": runner.failed,
            "rejected": runner.rejected,
            "counts": broker.counts("default"),
        }
        print("report " + json.dumps(report), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], float(sys.argv[2])))
    print("exited", flush=True)
