import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    Queue,
    Router,
    Worker,
)
from repid.asgi import connection_from, repid_lifespan
from repid.dashboard import create_app

# --8<-- [start:app]
connection = Connection(
    InMemoryMessageBroker(),
    results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
)
router = Router()


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@asynccontextmanager
async def worker_too(app: FastAPI) -> AsyncIterator[None]:
    # only for this self-contained example: the in-memory broker lives in this process,
    # so its worker runs here; with Redis or RabbitMQ the worker is `repid run` elsewhere
    await Queue(_connection=connection).declare()
    worker = Worker(routers=[router], handle_signals=[], _connection=connection)
    task = asyncio.create_task(worker.run())
    yield
    worker.stop()
    await task


app = FastAPI(lifespan=repid_lifespan(connection, then=worker_too))
app.mount("/repid", create_app(connection, read_only=True))


@app.post("/add")
async def add_endpoint(
    a: int, b: int, conn: Annotated[Connection, Depends(connection_from)]
) -> dict[str, Any]:
    job = Job("add", args={"a": a, "b": b}, _connection=conn)
    result = await job.enqueue_and_wait(timeout=5)
    return {"sum": result}


# --8<-- [end:app]


async def main() -> None:
    # --8<-- [start:client]
    async with app.router.lifespan_context(app):  # what uvicorn does at start-up/shutdown
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answer = await client.post("/add", params={"a": 2, "b": 3})
            print(f"POST /add -> {answer.status_code} {answer.json()}")
            page = await client.get("/repid/")
            shown = "default" in page.text
            print(f"GET /repid/ -> {page.status_code}, queue 'default' shown: {shown}")
    # --8<-- [end:client]
    print(f"disconnected after shutdown: {not connection.is_open}")


if __name__ == "__main__":
    asyncio.run(main())
