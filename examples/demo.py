"""repid in one file: a producer and a worker sharing the in-memory broker.

Run it with `python examples/demo.py`. It enqueues five jobs (one of them HIGH priority, one that
fails on its first attempt), runs a worker until it has processed them all, then prints the worker's
counters and a result read back from the results bucket. No server is needed.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import repid

app = repid.Repid(
    repid.Connection(
        repid.InMemoryMessageBroker(),
        results_bucket_broker=repid.InMemoryBucketBroker(use_result_bucket=True),
    )
)
router = repid.Router()
attempts: dict[str, int] = {}


def say(who: str, text: str) -> None:
    print(f"{who:<8} | {text}")


def call(job: repid.Job) -> str:
    arguments = ", ".join(f"{name}={value!r}" for name, value in (job.args or {}).items())
    return f"{job.name}({arguments})"


@router.actor
async def greet(name: str) -> str:
    say("worker", f"greet(name={name!r})")
    return f"Hello, {name}!"


@router.actor(retry_policy=lambda retry_number=1: timedelta(0))  # retry at once
async def flaky_upload(file: str) -> int:
    attempts[file] = attempts.get(file, 0) + 1
    if attempts[file] == 1:
        say("worker", f"flaky_upload(file={file!r}), attempt 1: the network hiccups")
        raise ConnectionError("connection reset by peer")
    say("worker", f"flaky_upload(file={file!r}), attempt {attempts[file]}: uploaded")
    return 1024


async def produce() -> repid.Job:
    """Enqueue five jobs; return the one whose result we read back at the end."""
    await repid.Queue().declare()
    jobs = [
        repid.Job("greet", args={"name": "Ada"}),
        repid.Job("greet", args={"name": "Grace"}, priority=repid.PrioritiesT.LOW),
        repid.Job("flaky_upload", args={"file": "report.pdf"}, retries=2),
        repid.Job("greet", args={"name": "Linus"}),
        repid.Job("greet", args={"name": "VIP"}, priority=repid.PrioritiesT.HIGH),
    ]
    for job in jobs:
        await job.enqueue()
        say("producer", f"enqueued {call(job)} with priority {job.priority.name}")
    return jobs[-1]


async def consume() -> repid.Runner:
    # One actor at a time, so the order of the runs shows the priorities; 5 jobs + 1 retry.
    worker = repid.Worker(routers=[router], messages_limit=6, tasks_limit=1)
    say("worker", "started: HIGH priority first, then MEDIUM in order, then LOW")
    return await worker.run()


async def main() -> None:
    async with app.magic(auto_disconnect=True):
        vip_job = await produce()
        runner = await consume()
        say(
            "worker",
            f"stopped: processed={runner.processed} succeeded={runner.succeeded} "
            f"failed={runner.failed} retried={runner.retried} dead_lettered={runner.dead_lettered}",
        )
        result = await vip_job.result
        assert result is not None
        took_ms = (result.finished_when - result.started_when) / 1e6
        outcome = f"success={result.success}, ran {took_ms:.2f} ms"
        say("results", f"{call(vip_job)} returned {result.data} ({outcome})")


if __name__ == "__main__":
    asyncio.run(main())
