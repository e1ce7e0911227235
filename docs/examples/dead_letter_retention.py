import asyncio
import time
from datetime import timedelta

from repid import (
    Connection,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    Queue,
    Repid,
    Router,
    Worker,
)
from repid.worker.retention import expire_dead_letters

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()


@router.actor(retries=0)
async def charge(order: int) -> None:
    raise ValueError(f"card of order {order} declined")


async def dead_ids() -> list[str]:
    messages = Queue("default").get_messages(category=MessageCategory.DEAD, stop_when_empty=True)
    return [message.key.id_ async for message in messages]


async def main() -> None:
    async with app.magic(auto_disconnect=True):
        await Queue("default").declare()
        await Job("charge", id_="order-1", args={"order": 1}, retries=0).enqueue()
        # --8<-- [start:worker]
        worker = Worker(
            routers=[router],
            dead_letter_ttl=timedelta(seconds=1),  # production: e.g. timedelta(days=7)
            retention_interval=timedelta(seconds=1),  # default: 5 minutes
            handle_signals=[],
        )
        # --8<-- [end:worker]
        task = asyncio.create_task(worker.run())
        deadline = time.monotonic() + 10
        seen = []
        while not seen or await dead_ids():  # dead first, then deleted by the sweep
            seen = seen or await dead_ids()
            assert time.monotonic() < deadline, "the dead letter was not deleted"
            await asyncio.sleep(0.05)
        print(f"dead letter {seen[0]} deleted by the sweep")
        worker.stop()
        await task

        # The same deletion by hand (here: everything dead for more than 0 s is old enough).
        await Job("charge", id_="order-2", args={"order": 2}, retries=0).enqueue()
        await Worker(routers=[router], messages_limit=1, handle_signals=[]).run()
        removed = await expire_dead_letters(app.connection, "default", older_than=0.0)
        print(f"expire_dead_letters removed {removed}")


if __name__ == "__main__":
    asyncio.run(main())
