import asyncio
import time
from datetime import datetime, timedelta

from repid import (
    Connection,
    InMemoryMessageBroker,
    Job,
    PrioritiesT,
    Queue,
    Repid,
    Router,
    Worker,
)

broker = InMemoryMessageBroker()
app = Repid(Connection(broker))
router = Router()
started = 0.0


@router.actor
async def work(label: str) -> None:
    print(f"ran {label} after {time.monotonic() - started:.1f}s")


async def main() -> None:
    global started
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        started = time.monotonic()
        # Priorities: among ready messages, HIGH runs before MEDIUM before LOW.
        await Job("work", args={"label": "low"}, priority=PrioritiesT.LOW).enqueue()
        await Job("work", args={"label": "medium"}).enqueue()
        await Job("work", args={"label": "high"}, priority=PrioritiesT.HIGH).enqueue()
        # Delays: a deferred job never runs before its time.
        later = datetime.now().astimezone() + timedelta(seconds=0.5)
        await Job("work", args={"label": "deferred"}, deferred_until=later).enqueue()
        # Unique jobs: while a message with this id is pending, enqueuing it again adds nothing.
        nightly = Job("work", args={"label": "unique"}, id_="nightly-cleanup")
        await nightly.enqueue()
        await nightly.enqueue()
        print(broker.counts("default"))

        await Worker(routers=[router], messages_limit=5, tasks_limit=1).run()


if __name__ == "__main__":
    asyncio.run(main())
