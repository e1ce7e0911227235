import asyncio

from repid import Connection, InMemoryMessageBroker, Job, Repid

app = Repid(Connection(InMemoryMessageBroker()))


async def main() -> None:
    # --8<-- [start:snippet]
    async with app.magic():
        j = Job(name="my_awesome_job")
        await j.enqueue()  # 💥 KeyError: 'default'
    # --8<-- [end:snippet]


if __name__ == "__main__":
    asyncio.run(main())
