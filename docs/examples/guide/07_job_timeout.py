import asyncio
from datetime import timedelta

from repid import Connection, InMemoryMessageBroker, Job, Repid

app = Repid(Connection(InMemoryMessageBroker()))


async def main() -> None:
    async with app.magic():
        # --8<-- [start:snippet]
        Job("very_fast_job", timeout=timedelta(seconds=5))
        Job("very_slow_job", timeout=timedelta(hours=2))
        # --8<-- [end:snippet]


if __name__ == "__main__":
    asyncio.run(main())
