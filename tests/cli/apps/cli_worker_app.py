"""A worker app for the CLI process tests: its factory enqueues its own jobs.

With the in-memory broker every process has its own queues, so each worker process fills
them at start-up. Progress is appended, one line per event with the pid, to $REPID_TEST_MARKER.
"""

from __future__ import annotations

import asyncio
import os

from repid import Connection, InMemoryMessageBroker, Job, Queue, Repid, Router

MARKER = os.environ.get("REPID_TEST_MARKER", os.devnull)
JOBS = int(os.environ.get("REPID_TEST_JOBS", "3"))
JOB_SECONDS = float(os.environ.get("REPID_TEST_JOB_SECONDS", "0"))

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()


def mark(event: str) -> None:
    # One short O_APPEND write per line: lines of concurrent processes never interleave.
    with open(MARKER, "a", encoding="utf-8") as marker:
        marker.write(f"{event} {os.getpid()}\n")


@router.actor(queue="work")
async def work(n: int) -> None:
    mark(f"job-start-{n}")
    if JOB_SECONDS:
        await asyncio.sleep(JOB_SECONDS)  # a long-running job, to observe graceful shutdown
    mark(f"job-done-{n}")


@router.actor(queue="other")
async def other() -> None:
    mark("other")


async def start() -> Router:
    """Factory target: connect, enqueue JOBS jobs, return the router."""
    await app.magic_connect()
    await Queue("work").declare()
    await Queue("other").declare()
    for n in range(JOBS):
        await Job("work", queue="work", args={"n": n}).enqueue()
    await Job("other", queue="other").enqueue()
    mark("started")
    return router
