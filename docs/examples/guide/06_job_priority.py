import asyncio

from repid import Connection, InMemoryMessageBroker, Job, PrioritiesT, Repid

app = Repid(Connection(InMemoryMessageBroker()))


async def main() -> None:
    async with app.magic():
        # --8<-- [start:snippet]
        Job("awesome_job_with_priority", priority=PrioritiesT.HIGH)
        # --8<-- [end:snippet]


if __name__ == "__main__":
    asyncio.run(main())
