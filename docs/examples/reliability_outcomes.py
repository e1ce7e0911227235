import asyncio
from datetime import timedelta

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    Queue,
    Repid,
    Router,
    Worker,
)

app = Repid(
    Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )
)
router = Router()
calls: dict[str, int] = {}
slow_started = asyncio.Event()


def no_backoff(retry_number: int = 1) -> timedelta:
    return timedelta(0)  # retry at once (the default policy backs off exponentially)


@router.actor
async def succeed() -> str:
    return "done"


@router.actor(retry_policy=no_backoff)
async def fail_once() -> str:
    calls["fail_once"] = calls.get("fail_once", 0) + 1
    if calls["fail_once"] == 1:
        raise ConnectionError("flaky network")
    return "done on attempt 2"


@router.actor(retry_policy=no_backoff)
async def always_fail() -> None:
    raise ValueError("bad data")


@router.actor
async def slow() -> None:
    slow_started.set()
    await asyncio.sleep(60)


async def main() -> None:
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        jobs = [Job("succeed"), Job("fail_once", retries=3), Job("always_fail", retries=2)]
        for job in jobs:
            await job.enqueue()
        # 3 jobs: 1 + 2 + 3 attempts.
        runner = await Worker(routers=[router], messages_limit=6).run()
        print(f"attempts={runner.processed} retried={runner.retried}")
        for job in jobs:
            result = await job.result
            assert result is not None
            outcome = result.data if result.success else result.exception_type
            print(f"{job.name}: success={result.success} {outcome}")
        async for dead in Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True):
            info = dead.dead_letter
            assert info is not None
            print(f"dead letter: {dead.key.topic} {info.reason} {info.error_type} x{info.attempts}")

        # Graceful shutdown: an actor still running after graceful_shutdown_time is cancelled
        # and its message goes back to the queue, without counting an attempt.
        await Job("slow").enqueue()
        worker = Worker(routers=[router], graceful_shutdown_time=0.1)
        running = asyncio.create_task(worker.run())
        await slow_started.wait()
        worker.stop()  # what SIGINT or SIGTERM does
        runner = await running
        async for message in Queue().get_messages(stop_when_empty=True):
            print(f"back in the queue: {message.key.topic}, attempt {message.parameters.attempt}")
        print(f"returned on shutdown: {runner.rejected}")


if __name__ == "__main__":
    asyncio.run(main())
