import asyncio

from repid import Connection, InMemoryMessageBroker, Job, Queue, Repid, Router, Worker

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()
started = asyncio.Event()
release = asyncio.Event()


@router.actor
async def resize(image: int) -> None:
    started.set()
    await release.wait()


def enqueue_from_plain_code() -> None:
    # e.g. a WSGI view or a thread pool: no event loop in this thread
    Job("resize", args={"image": 1}).enqueue_sync(timeout=10)


async def main() -> None:
    async with app.magic():
        await Queue().declare()
        # --8<-- [start:control]
        worker = Worker(handle_signals=[], startup_timeout=30, tasks_limit=8, prefetch=32)
        print(f"actors found: {worker.include_module(__name__)}")
        await asyncio.to_thread(enqueue_from_plain_code)

        task = asyncio.create_task(worker.run())
        await started.wait()
        status = worker.status()
        print(f"{status.state}: in flight {status.in_flight}")

        worker.stop()
        print(f"{worker.status().state}, is_running={worker.is_running}")
        release.set()
        await task
        done = worker.status()
        print(f"{done.state}: processed={done.processed} succeeded={done.succeeded}")
        # --8<-- [end:control]


if __name__ == "__main__":
    asyncio.run(main())
