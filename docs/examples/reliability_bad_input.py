import asyncio
from datetime import timedelta

from repid import (
    Connection,
    InMemoryMessageBroker,
    Job,
    MessageCategory,
    MessageTooLargeError,
    Queue,
    Repid,
    Router,
    SerializationError,
    Worker,
)

broker = InMemoryMessageBroker(max_message_size=64 * 1024)
app = Repid(Connection(broker))
router = Router()


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor
async def divide(a: int, b: int) -> float:
    return a / b


@router.actor
async def dawdle() -> None:
    await asyncio.sleep(30)


async def main() -> None:
    async with app.magic(auto_disconnect=True):
        await Queue().declare()

        # --8<-- [start:enqueue]
        # Refused at enqueue: nothing is sent.
        try:
            await Job("add", args={"a": object(), "b": 1}).enqueue()
        except SerializationError as exc:  # also a TypeError
            print(f"refused: {exc}")
        try:
            await Job("add", args={"a": "x" * 100_000, "b": 1}).enqueue()
        except MessageTooLargeError as exc:  # also a ValueError
            print(f"refused: {exc}")
        # --8<-- [end:enqueue]

        # --8<-- [start:dead]
        # Accepted by the broker, dead-lettered by the worker: one of each reason.
        broker.inject_raw("default", b"\x00 not a repid message")  # -> decode_error
        await Job("nobody_home").enqueue()  # -> unknown_actor
        await Job("add", args={"a": "one", "b": 2}).enqueue()  # -> validation_error
        await Job("divide", args={"a": 1, "b": 0}).enqueue()  # -> exception
        await Job("dawdle", timeout=timedelta(seconds=1)).enqueue()  # -> timeout
        await Job("add", args={"a": 1, "b": 2}, ttl=timedelta(seconds=1)).enqueue()
        await asyncio.sleep(1.1)  # ... not started within its ttl -> expired

        runner = await Worker(routers=[router], messages_limit=6).run()
        print(f"processed={runner.processed} dead_lettered={runner.dead_lettered}")

        async for dead in Queue().get_messages(category=MessageCategory.DEAD, stop_when_empty=True):
            info = dead.dead_letter
            assert info is not None
            actor = dead.key.topic or "?"
            print(f"{info.reason:<16} actor={actor:<11} error={info.error_type}")
            if info.reason == "decode_error":
                print(f"{'':<16} raw bytes kept: {dead.delivery.raw!r}")
        # --8<-- [end:dead]


if __name__ == "__main__":
    asyncio.run(main())
