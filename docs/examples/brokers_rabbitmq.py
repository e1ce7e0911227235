import asyncio
import os
import time
from datetime import datetime, timedelta
from uuid import uuid4

from repid import (
    Connection,
    Job,
    MessageCategory,
    PrioritiesT,
    Queue,
    RabbitMessageBroker,
    RedisBucketBroker,
    Repid,
    Router,
    Worker,
)

# --8<-- [start:connection]
RABBITMQ = os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/")
REDIS = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")

app = Repid(
    Connection(
        RabbitMessageBroker(RABBITMQ, fast_queues={"metrics"}),  # "metrics": speed over safety
        results_bucket_broker=RedisBucketBroker(REDIS, use_result_bucket=True),
    )
)
# --8<-- [end:connection]


def cluster_brokers() -> list[RabbitMessageBroker]:
    """Brokers on quorum queues, of one node and of a 3-node cluster (built, not connected:
    the cluster's nodes are made up)."""
    # --8<-- [start:quorum]
    broker = RabbitMessageBroker("amqp://guest:guest@127.0.0.1:5672/", queue_type="quorum")
    # --8<-- [end:quorum]
    # --8<-- [start:cluster]
    listed = RabbitMessageBroker(
        ["amqp://app:secret@n1:5672/", "amqp://app:secret@n2:5672/", "amqp://app:secret@n3:5672/"],
        queue_type="quorum",
    )
    one_string = RabbitMessageBroker(
        "amqp://app:secret@n1:5672,n2:5672,n3:5672/", queue_type="quorum"
    )
    # --8<-- [end:cluster]
    return [broker, listed, one_string]


QUEUE = f"docs_example_{uuid4().hex[:8]}"  # a fresh queue, deleted at the end
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
        await queue.declare()
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
                "work", queue=QUEUE, args={"label": "deferred"}, deferred_until=later
            ).enqueue()
            await Job("charge", queue=QUEUE, args={"order": 7}).enqueue()
            await Worker(routers=[router], messages_limit=4, tasks_limit=1).run()

            async for dead in queue.get_messages(
                category=MessageCategory.DEAD, stop_when_empty=True
            ):
                info = dead.dead_letter
                print(f"dead letter: {dead.key.topic} {info.reason} {info.error_type}")

            worker = asyncio.create_task(Worker(routers=[router], messages_limit=1).run())
            print("add:", await Job("add", queue=QUEUE, args={"a": 2, "b": 40}).enqueue_and_wait(5))
            await worker
        finally:
            await queue.delete()


if __name__ == "__main__":
    assert all("secret" not in repr(broker) for broker in cluster_brokers())
    asyncio.run(main())
