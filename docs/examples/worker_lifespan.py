import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from repid import (
    Connection,
    Depends,
    InMemoryMessageBroker,
    Job,
    MessageDependency,
    Queue,
    Repid,
    Router,
    Worker,
)

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()


class Pool:
    """Stands for a database pool, an HTTP client: something to open once per worker."""

    async def fetch(self, user_id: int) -> str:
        return f"user-{user_id}"


# --8<-- [start:lifespan]
@asynccontextmanager
async def lifespan(worker: Worker) -> AsyncIterator[dict[str, Pool]]:
    print("opening the pool")
    pool = Pool()
    yield {"pool": pool}  # worker.state while the worker runs
    print("closing the pool, after the last actor")


async def get_pool(message: MessageDependency) -> Pool:
    pool: Pool = message.worker_state["pool"]
    return pool


@router.actor
async def greet(user_id: int, pool: Annotated[Pool, Depends(get_pool)]) -> None:
    print(f"hello {await pool.fetch(user_id)}")


async def main() -> None:
    async with app.magic():
        await Queue().declare()
        await Job("greet", args={"user_id": 7}).enqueue()
        await Worker(routers=[router], lifespan=lifespan, messages_limit=1).run()


# --8<-- [end:lifespan]


if __name__ == "__main__":
    asyncio.run(main())
