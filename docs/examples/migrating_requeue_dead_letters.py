import asyncio

from repid import (
    Connection,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    Queue,
    Repid,
    Router,
    Worker,
)

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()
service_up = False


@router.actor
async def charge(order_id: int) -> None:
    if not service_up:
        raise ConnectionError("payment service is down")
    print(f"charged order {order_id}")


async def main() -> None:
    global service_up
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        for order_id in (1, 2):
            await Job("charge", args={"order_id": order_id}).enqueue()
        await Worker(routers=[router], messages_limit=2).run()  # both fail, no retries

        # stop_when_empty=True: the loop ends once the dead part is empty (by default it
        # waits for more, as in repid 1.x).
        service_up = True
        dead_part = Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True)
        async for dead in dead_part:
            print(f"requeueing {dead.raw_payload}: {dead.dead_letter.error_message}")
            await dead.retry(revive=True)  # back to the queue, with fresh retries

        runner = await Worker(routers=[router], messages_limit=2).run()
        print(f"second run: succeeded={runner.succeeded}")


if __name__ == "__main__":
    asyncio.run(main())
