import asyncio

from repid import Connection, InMemoryMessageBroker, Queue, Repid

app = Repid(Connection(InMemoryMessageBroker()))


async def setup() -> None:
    async with app.magic():
        await Queue().declare()  # (1)
        await Queue(name="my_awesome_queue").declare()


if __name__ == "__main__":
    asyncio.run(setup())
