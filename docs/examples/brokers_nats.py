import asyncio
import os
import time
from datetime import datetime, timedelta
from uuid import uuid4

from repid import (
    Connection,
    Job,
    MessageCategory,
    NatsBucketBroker,
    NatsMessageBroker,
    PrioritiesT,
    Queue,
    Repid,
    Router,
    Worker,
)

# --8<-- [start:connection]
NATS = os.environ.get("REPID_NATS_SERVERS", "nats://127.0.0.1:4222")

app = Repid(
    Connection(
        # Streams, consumers and key-value buckets are named after the prefix.
        NatsMessageBroker(NATS, prefix="shop-"),
        results_bucket_broker=NatsBucketBroker(NATS, prefix="shop-", use_result_bucket=True),
    )
)
# --8<-- [end:connection]

QUEUE = f"docs_example_{uuid4().hex[:8]}"  # a fresh stream, deleted at the end
router = Router()
started = 0.0


@router.actor(queue=QUEUE)
async def work(label: str) -> None:
    print(f"ran {label} after {time.monotonic() - started:.1f}s")


@router.actor(queue=QUEUE)
async def add(a: int, b: int) -> int:
    return a + b


@router.actor(queue=QUEUE)
async def charge(order: int) -> None:
    raise ValueError(f"card declined for order {order}")


async def main() -> None:
    global started
    async with app.magic(auto_disconnect=True):
        queue = Queue(QUEUE)
        await queue.declare()  # the streams shop-QUEUE and shop-QUEUE_dead, three consumers
        try:
            started = time.monotonic()
            await Job(
                "work", queue=QUEUE, args={"label": "low"}, priority=PrioritiesT.LOW
            ).enqueue()
            await Job(
                "work", queue=QUEUE, args={"label": "high"}, priority=PrioritiesT.HIGH
            ).enqueue()
            later = datetime.now().astimezone() + timedelta(seconds=0.5)
            await Job(
                "work",
                queue=QUEUE,
                args={"label": "deferred"},
                deferred_until=later,
                priority=PrioritiesT.LOW,  # behind "low" once due, whatever the timing
            ).enqueue()
            await Job("charge", queue=QUEUE, args={"order": 7}).enqueue()
            print(await app.connection.message_broker.counts(QUEUE))
            # Strict priorities: the HIGH message runs first although it was sent second.
            await Worker(routers=[router], messages_limit=4, tasks_limit=1).run()

            async for dead in queue.get_messages(
                category=MessageCategory.DEAD, stop_when_empty=True
            ):
                info = dead.dead_letter
                print(f"dead letter: {dead.key.topic} {info.reason} {info.error_type}")

            worker = asyncio.create_task(Worker(routers=[router], messages_limit=1).run())
            adding = Job(
                "add", queue=QUEUE, args={"a": 2, "b": 40}, result_ttl=timedelta(minutes=1)
            )
            print("add:", await adding.enqueue_and_wait(10))
            await worker
        finally:
            await queue.delete()


if __name__ == "__main__":
    asyncio.run(main())
