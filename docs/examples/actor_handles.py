import asyncio

from repid import Connection, InMemoryMessageBroker, PrioritiesT, Queue, Repid, Router, Worker

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()


# --8<-- [start:actor]
@router.actor(queue="orders")
async def process_order(order_id: int, note: str = "") -> None:
    print(f"processing order {order_id} {note}".rstrip())


# --8<-- [end:actor]


async def main() -> None:
    async with app.magic():
        await Queue("orders").declare()
        # --8<-- [start:enqueue]
        job = await process_order.enqueue(order_id=1)  # a Job for 'process_order' on 'orders'
        await process_order.send(2, note="gift")  # the same; positional arguments bind too
        await process_order.options(priority=PrioritiesT.HIGH).enqueue(order_id=3)
        try:
            await process_order.enqueue(orderid=4)  # nothing is sent
        except TypeError as exc:
            print(exc)
        # --8<-- [end:enqueue]
        print(f"sent to {job.queue.name!r}")
        worker = Worker(routers=[router], messages_limit=3, handle_signals=[])
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
