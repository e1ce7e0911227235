import asyncio

import pydantic

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    Queue,
    Repid,
    Router,
    Worker,
)

app = Repid(
    Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )
)
router = Router()


class Invoice(pydantic.BaseModel):
    order: int
    total: float


@router.actor
async def bill(order: int) -> Invoice:
    return Invoice(order=order, total=19.5)


@router.actor
async def bill_badly(order: int) -> Invoice:
    return {"order": order}  # type: ignore[return-value]  # no total: does not fit


async def main() -> None:
    async with app.magic():
        await Queue().declare()
        good = await Job("bill", args={"order": 7}).enqueue()
        await Job("bill_badly", args={"order": 8}).enqueue()
        await Worker(routers=[router], messages_limit=2, handle_signals=[]).run()

        invoice = await good.wait(timeout=5, as_type=Invoice)
        print(f"invoice: {invoice!r}")
        async for dead in Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True):
            assert dead.dead_letter is not None
            print(f"dead letter: {dead.key.topic} {dead.dead_letter.reason}")
            await dead.ack()


if __name__ == "__main__":
    asyncio.run(main())
