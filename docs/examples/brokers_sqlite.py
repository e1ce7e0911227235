import asyncio
import os
import sys
import tempfile

from repid import (
    Connection,
    Job,
    PrioritiesT,
    Queue,
    Repid,
    Router,
    SqliteBucketBroker,
    SqliteMessageBroker,
    Worker,
)

router = Router()


@router.actor
async def work(label: str) -> None:
    print(f"ran {label} in the worker process")


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


def app_on(path: str) -> Repid:
    # One file: the queues, the results and the shared state of every process that opens it.
    return Repid(
        Connection(
            SqliteMessageBroker(f"sqlite:///{path}"),
            results_bucket_broker=SqliteBucketBroker(f"sqlite:///{path}", use_result_bucket=True),
        )
    )


async def worker(path: str) -> None:
    async with app_on(path).magic(auto_disconnect=True):
        await Worker(routers=[router], messages_limit=4, tasks_limit=1).run()


async def producer(path: str) -> None:
    app = app_on(path)
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        await Job("work", args={"label": "low"}, priority=PrioritiesT.LOW).enqueue()
        await Job("work", args={"label": "medium"}).enqueue()
        await Job("work", args={"label": "high"}, priority=PrioritiesT.HIGH).enqueue()
        total = await Job("add", args={"a": 40, "b": 2}, priority=PrioritiesT.LOW).enqueue()
        print(await app.connection.message_broker.counts("default"))
        # A worker in another process, on the same file: no server in between.
        child = await asyncio.create_subprocess_exec(sys.executable, __file__, "worker", path)
        await child.wait()
        print(f"add: {await total.wait(timeout=5.0)} (read back by the producer)")


if __name__ == "__main__":
    if sys.argv[1:2] == ["worker"]:
        asyncio.run(worker(sys.argv[2]))
    else:
        with tempfile.TemporaryDirectory() as directory:
            asyncio.run(producer(os.path.join(directory, "repid.db")))
