import asyncio
import os
import time
from datetime import datetime, timedelta
from uuid import uuid4

import asyncpg

from repid import (
    Connection,
    Job,
    MessageCategory,
    PostgresBucketBroker,
    PostgresMessageBroker,
    PrioritiesT,
    Queue,
    Repid,
    Router,
    Worker,
)

SCHEMA = f"docs_{uuid4().hex[:8]}"  # a fresh schema, dropped at the end

# --8<-- [start:connection]
DSN = os.environ.get("REPID_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")

broker = PostgresMessageBroker(DSN, schema=SCHEMA, lease_duration=30.0)
app = Repid(
    Connection(
        broker,
        results_bucket_broker=PostgresBucketBroker(DSN, schema=SCHEMA, use_result_bucket=True),
    )
)
# --8<-- [end:connection]

QUEUE = "shop"
router = Router()
started = 0.0


@router.actor(queue=QUEUE)
async def work(label: str) -> None:
    print(f"ran {label} after {time.monotonic() - started:.1f}s")


@router.actor(queue=QUEUE)
async def ship(order: int) -> None:
    print(f"shipping order {order}")


@router.actor(queue=QUEUE)
async def add(a: int, b: int) -> int:
    return a + b


@router.actor(queue=QUEUE)
async def charge(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


# --8<-- [start:transaction]
async def place_order(db: asyncpg.Connection, order: int, *, fail: bool = False) -> None:
    """Write the order and enqueue its shipping job in one transaction."""
    async with db.transaction():
        await db.execute(f"INSERT INTO {SCHEMA}.orders (id) VALUES ($1)", order)
        with broker.transaction(db):  # enqueues below write on `db`, in its transaction
            await Job("ship", queue=QUEUE, args={"order": order}).enqueue()
        if fail:
            raise RuntimeError("payment failed")  # rolls back the order *and* its job


# --8<-- [end:transaction]


async def main() -> None:
    global started
    db = await asyncpg.connect(DSN)
    try:
        async with app.magic(auto_disconnect=True):  # creates the schema's tables on connect
            await db.execute(f"CREATE TABLE {SCHEMA}.orders (id int PRIMARY KEY)")
            queue = Queue(QUEUE)
            await queue.declare()
            await place_order(db, 1)
            try:
                await place_order(db, 2, fail=True)
            except RuntimeError as exc:
                print(f"order 2: {exc}")
            started = time.monotonic()
            await Job(
                "work", queue=QUEUE, args={"label": "low"}, priority=PrioritiesT.LOW
            ).enqueue()
            await Job(
                "work", queue=QUEUE, args={"label": "high"}, priority=PrioritiesT.HIGH
            ).enqueue()
            later = datetime.now().astimezone() + timedelta(seconds=0.5)
            await Job(
                "work", queue=QUEUE, args={"label": "deferred"}, deferred_until=later
            ).enqueue()
            await Job("charge", queue=QUEUE, args={"order": 7}).enqueue()
            print(await broker.counts(QUEUE))
            await Worker(routers=[router], messages_limit=5, tasks_limit=1).run()

            async for dead in queue.get_messages(
                category=MessageCategory.DEAD, stop_when_empty=True
            ):
                info = dead.dead_letter
                print(f"dead letter: {dead.key.topic} {info.reason} {info.error_type}")

            worker = asyncio.create_task(Worker(routers=[router], messages_limit=1).run())
            adding = Job(
                "add", queue=QUEUE, args={"a": 2, "b": 40}, result_ttl=timedelta(minutes=1)
            )
            print("add:", await adding.enqueue_and_wait(5))
            await worker
    finally:
        await db.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await db.close()


if __name__ == "__main__":
    asyncio.run(main())
