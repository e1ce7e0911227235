import asyncio
from datetime import timedelta

from repid import (
    Connection,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    PrioritiesT,
    Queue,
    Repid,
    Router,
    Worker,
)

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()
order: list[str] = []


def no_backoff(retry_number: int = 1) -> timedelta:
    return timedelta(0)


@router.actor(priority=PrioritiesT.HIGH, timeout=timedelta(seconds=30))
async def alert(text: str) -> None:
    order.append(text)


@router.actor(retries=2, retry_policy=no_backoff)
async def sync_account(text: str) -> None:
    order.append(text)
    raise ConnectionError("partner down")


async def main() -> None:
    async with app.magic():
        await Queue().declare()
        await Job("sync_account", args={"text": "sync"}).enqueue()  # retries=2 from the actor
        await Job("alert", args={"text": "late alert"}, priority=PrioritiesT.LOW).enqueue()
        await Job("alert", args={"text": "alert"}).enqueue()  # HIGH from the actor
        await Worker(routers=[router], messages_limit=5, tasks_limit=1, handle_signals=[]).run()
        print(f"first: {order[0]}")  # HIGH, from the actor, although sent last
        print(f"late alert after alert: {order.index('late alert') > order.index('alert')}")
        print(f"sync_account runs: {order.count('sync')}")
        async for dead in Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True):
            assert dead.dead_letter is not None
            print(f"dead letter: {dead.key.topic} after {dead.dead_letter.attempts} attempts")
            await dead.ack()


if __name__ == "__main__":
    asyncio.run(main())
