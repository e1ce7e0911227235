import asyncio
from typing import Annotated

from pydantic import BaseModel

from repid import (
    Connection,
    Depends,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    Queue,
    Repid,
    Router,
    Worker,
)

# --8<-- [start:app]
app = Repid(
    Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )
)
# --8<-- [end:app]


# --8<-- [start:actors]
class Order(BaseModel):
    id: int
    items: list[str]


router = Router()


def get_tax_rate() -> float:
    return 0.2


@router.actor
async def price_order(order: Order, tax: Annotated[float, Depends(get_tax_rate)]) -> float:
    subtotal = 10.0 * len(order.items)
    return round(subtotal * (1 + tax), 2)


@router.actor(queue="reports")
def build_report(order_id: int) -> str:  # a sync actor runs in a thread pool
    return f"report-{order_id}.pdf"


# --8<-- [end:actors]


async def main() -> None:
    async with app.magic(auto_disconnect=True):
        # --8<-- [start:produce]
        await Queue().declare()
        await Queue("reports").declare()
        price = Job("price_order", args={"order": Order(id=7, items=["book", "pen"])})
        await price.enqueue()
        report = Job("build_report", queue="reports", args={"order_id": "7"})  # "7" -> 7
        await report.enqueue()
        # --8<-- [end:produce]

        # --8<-- [start:work]
        worker = Worker(routers=[router], messages_limit=2)
        runner = await worker.run()
        print(f"processed={runner.processed} succeeded={runner.succeeded}")
        # --8<-- [end:work]

        # --8<-- [start:results]
        for job in (price, report):
            result = await job.result
            assert result is not None
            assert result.finished is not None
            finished = result.finished.isoformat(timespec="seconds")
            print(f"{job.name}: success={result.success} value={result.value!r} data={result.data}")
            print(f"  finished {finished}, took {result.duration}")
        # --8<-- [end:results]


if __name__ == "__main__":
    asyncio.run(main())
