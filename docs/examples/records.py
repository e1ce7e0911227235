import asyncio
from datetime import timedelta

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    Queue,
    Repid,
    Router,
    Worker,
)

# --8<-- [start:app]
app = Repid(
    Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
        records=True,  # keep a record of every job, in the results bucket broker
        record_retention=timedelta(days=1),
        error_history=3,  # the last 3 failed attempts of each job
    )
)
# --8<-- [end:app]
router = Router()


def at_once(retry_number: int = 1) -> int:
    return 0


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor(retry_policy=at_once)
async def flaky(n: int) -> None:
    raise ConnectionError(f"upstream {n} is down")


async def main() -> None:
    async with app.magic() as connection:
        await Queue().declare()
        # --8<-- [start:state]
        ok = await Job("add", args={"a": 2, "b": 3}).enqueue()
        bad = await Job("flaky", args={"n": 1}, retries=1).enqueue()
        assert ok.last_id is not None
        assert bad.last_id is not None
        queued = await connection.job_state(ok.last_id)
        print(f"before: {queued.status if queued else None}")

        await Worker(routers=[router], messages_limit=3, handle_signals=[]).run()

        done = await connection.job_state(ok.last_id)
        assert done is not None
        print(f"add: {done.status} after {done.attempts} attempt(s)")
        dead = await connection.job_state(bad.last_id)
        assert dead is not None
        print(f"flaky: {dead.status} after {dead.attempts} attempt(s)")
        for error in dead.errors:
            print(f"  attempt {error.attempt}: {error.type}: {error.message}")
        # --8<-- [end:state]


if __name__ == "__main__":
    asyncio.run(main())
