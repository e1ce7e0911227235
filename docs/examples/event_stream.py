import asyncio

from repid import Connection, InMemoryMessageBroker, Job, Queue, Repid, Router, Worker

# --8<-- [start:publish]
broker = InMemoryMessageBroker()  # or RedisMessageBroker(dsn), RabbitMessageBroker(dsn), ...
app = Repid(Connection(broker, publish_events=True))  # the producers' and workers' connection
# --8<-- [end:publish]
router = Router()


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


# --8<-- [start:subscribe]
async def watch(connection: Connection, ready: asyncio.Event) -> None:
    async with connection.events(kinds=["started", "succeeded"], queue="default") as events:
        ready.set()  # subscribed: every event published from now on arrives
        async for event in events:
            print(f"{event.kind} {event.actor} attempt={event.attempt} by {event.worker}")
            if event.kind == "succeeded":
                print(f"  in {event.duration:.3f}s")
                break  # leaving the loop unsubscribes


# --8<-- [end:subscribe]


async def main() -> None:
    # Another process opens its own connection to the same broker (the in-memory broker lives
    # in this process, so here it is a second Connection on the same broker object).
    monitor = Connection(broker)
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        ready = asyncio.Event()
        watcher = asyncio.create_task(watch(monitor, ready))
        await ready.wait()
        await Job("add", args={"a": 2, "b": 3}).enqueue()
        await Worker(routers=[router], messages_limit=1, handle_signals=[]).run()
        await watcher


if __name__ == "__main__":
    asyncio.run(main())
