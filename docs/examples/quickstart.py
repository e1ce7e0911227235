import asyncio

from repid import Connection, InMemoryMessageBroker, Job, Queue, Repid, Router, Worker

app = Repid(Connection(InMemoryMessageBroker()))
router = Router()


@router.actor
async def send_welcome_email(user_id: int, language: str = "en") -> None:
    print(f"Sending a welcome email to user {user_id} ({language})")


async def main() -> None:
    async with app.magic(auto_disconnect=True):
        # Producer side: declare the queue, then enqueue jobs.
        await Queue().declare()
        await Job("send_welcome_email", args={"user_id": 1}).enqueue()
        await Job("send_welcome_email", args={"user_id": 2, "language": "fr"}).enqueue()

        # Consumer side: a worker runs the actors (it stops here after two messages).
        runner = await Worker(routers=[router], messages_limit=2).run()
        print(f"Processed {runner.processed} jobs")


if __name__ == "__main__":
    asyncio.run(main())
