import asyncio
import os
from uuid import uuid4

from repid import (
    Connection,
    Job,
    Queue,
    RabbitMessageBroker,
    RedisBucketBroker,
    RedisSharedState,
    Router,
    Worker,
)

RABBITMQ = os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/")
REDIS = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
RUN = uuid4().hex[:8]  # a fresh queue and key prefix, gone at the end


# --8<-- [start:connection]
def connection() -> Connection:
    """What every process of the app builds: RabbitMQ, with its state shared through Redis."""
    return Connection(
        RabbitMessageBroker(RABBITMQ, shared_state=RedisSharedState(REDIS, prefix=f"docs-{RUN}:")),
        results_bucket_broker=RedisBucketBroker(REDIS, use_result_bucket=True),
    )


# --8<-- [end:connection]


QUEUE = f"docs_state_{RUN}"
router = Router()
kept = asyncio.Event()


@router.actor(queue=QUEUE)
async def report(name: str) -> None:
    print(f"ran {name}")
    if name == "kept":
        kept.set()


async def main() -> None:
    # Three connections stand for three processes: two producers and a worker.
    first, second, worker_side = connection(), connection(), connection()
    for conn in (first, second, worker_side):
        await conn.connect()
    queue = Queue(QUEUE, _connection=first)
    await queue.declare()
    try:
        print("shared_state:", first.message_broker.capabilities.shared_state)
        await Job(
            "report", queue=QUEUE, args={"name": "nightly"}, id_="nightly", _connection=first
        ).enqueue()
        # The id is pending, enqueued by the other producer: not added again.
        await Job(
            "report", queue=QUEUE, args={"name": "nightly again"}, id_="nightly", _connection=second
        ).enqueue()
        doomed = await Job(
            "report", queue=QUEUE, args={"name": "doomed"}, id_="doomed", _connection=first
        ).enqueue()
        outcome = await Job("report", queue=QUEUE, id_="doomed", _connection=second).cancel()
        print("cancelled from another process:", outcome.value, doomed.id_)
        await Job("report", queue=QUEUE, args={"name": "kept"}, _connection=first).enqueue()

        worker = Worker(routers=[router], _connection=worker_side, heartbeat_interval=0.2)
        running = asyncio.create_task(worker.run())
        await kept.wait()
        live = await second.live_workers()
        print("live workers seen by another process:", [w.queues for w in live])
        worker.stop()
        await running
    finally:
        await queue.delete()
        for conn in (first, second, worker_side):
            await conn.disconnect()


if __name__ == "__main__":
    asyncio.run(main())
