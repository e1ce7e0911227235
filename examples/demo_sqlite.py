"""repid on one SQLite file: a producer process and worker processes, no server.

Run it with `python examples/demo_sqlite.py`. A producer process enqueues six jobs into a
SQLite file and exits; a worker process runs three of them and stops; a second worker process
(the "restart") picks up the other three from the file. Then this process reads the queue's
counts and a result back from the same file (it is deleted at the end).
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import repid

router = repid.Router()


def app_on(path: str) -> repid.Repid:
    url = f"sqlite:///{path}"  # a file path: "sqlite:////var/lib/app/repid.db"
    return repid.Repid(
        repid.Connection(
            repid.SqliteMessageBroker(url),
            results_bucket_broker=repid.SqliteBucketBroker(url, use_result_bucket=True),
        )
    )


def say(who: str, text: str) -> None:
    print(f"{who:<9} | {text}", flush=True)


@router.actor
async def resize(photo: int) -> str:
    say(f"worker {sys.argv[3]}", f"resize(photo={photo}) in process {os.getpid()}")
    return f"photo-{photo}-small.jpg"


async def produce(path: str) -> None:
    async with app_on(path).magic(auto_disconnect=True):
        await repid.Queue().declare()
        for photo in range(1, 7):
            job = repid.Job("resize", args={"photo": photo}, result_id=f"resized-{photo}")
            await job.enqueue()
        say("producer", f"enqueued 6 jobs into {os.path.basename(path)} and exited")


async def work(path: str, count: int) -> None:
    async with app_on(path).magic(auto_disconnect=True):
        runner = await repid.Worker(routers=[router], messages_limit=count, tasks_limit=1).run()
        say(f"worker {sys.argv[3]}", f"stopped after {runner.processed} jobs")


async def run(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(sys.executable, __file__, *args)
    assert await process.wait() == 0


async def main(path: str) -> None:
    await run("produce", path)
    await run("work", path, "1")  # runs three jobs, then stops
    await run("work", path, "2")  # the restarted worker picks up where the first one stopped
    app = app_on(path)
    async with app.magic(auto_disconnect=True):
        counts = await app.connection.message_broker.counts("default")
        say("main", f"queue now: {counts}")
        results = app.connection.results_bucket_broker
        assert results is not None
        result = await results.get_bucket("resized-6")
        assert isinstance(result, repid.ResultBucket)
        say("main", f"result of photo 6, stored by worker 2: {result.data}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["produce"]:
        asyncio.run(produce(sys.argv[2]))
    elif sys.argv[1:2] == ["work"]:
        asyncio.run(work(sys.argv[2], 3))
    else:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(main(os.path.join(directory, "repid.db")))
