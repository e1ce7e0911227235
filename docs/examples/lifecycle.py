"""Waiting for results, cancelling, snoozing, limits and lifecycle events (in-memory broker)."""

import asyncio
from datetime import UTC, datetime, timedelta

from repid import (
    Connection,
    InMemoryBucketBroker,
    InMemoryMessageBroker,
    Job,
    JobCancelledError,
    JobEvent,
    JobFailedError,
    Queue,
    RateLimit,
    Repid,
    Router,
    Snooze,
    Worker,
)

app = Repid(
    Connection(
        InMemoryMessageBroker(),
        results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
    )
)
router = Router()
report_started = asyncio.Event()
calls = {"fetch_rates": 0}


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor
async def charge(order_id: int) -> None:
    raise ValueError(f"card declined for order {order_id}")


@router.actor
async def long_report() -> None:
    report_started.set()
    await asyncio.sleep(3600)


@router.actor
async def fetch_rates() -> str:
    calls["fetch_rates"] += 1
    if calls["fetch_rates"] == 1:
        raise Snooze(timedelta(seconds=0.2))  # not ready yet: try again later, no attempt used
    return "rates fetched"


@router.actor(max_concurrency=2, rate_limit=RateLimit(50, per=timedelta(seconds=1)))
async def call_partner_api(n: int) -> int:
    return n


def on_event(event: JobEvent) -> None:
    if event.actor == "charge":
        error = f" {event.error_type}" if event.error_type else ""
        print(f"event: {event.kind} {event.actor} attempt={event.attempt}{error}")


async def main() -> None:
    app.connection.on_event(on_event)
    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        worker = Worker(routers=[router], handle_signals=[])
        running = asyncio.create_task(worker.run())

        print("add:", await Job("add", args={"a": 2, "b": 3}).enqueue_and_wait(timeout=5))

        try:
            await Job("charge", args={"order_id": 7}).enqueue_and_wait(timeout=5)
        except JobFailedError as exc:
            print(f"charge failed: {exc.exception_type}: {exc}")

        report = await Job("long_report").enqueue()
        await report_started.wait()
        print("cancel running:", await report.cancel())
        try:
            await report.wait(timeout=5)
        except JobCancelledError:
            print("long_report was cancelled")

        later = datetime.now(tz=UTC) + timedelta(hours=1)
        pending = await Job("add", args={"a": 1, "b": 1}, deferred_until=later).enqueue()
        print("cancel queued:", await pending.cancel())

        print("fetch_rates:", await Job("fetch_rates").enqueue_and_wait(timeout=5))
        print("calls:", calls["fetch_rates"])

        results = await asyncio.gather(
            *(Job("call_partner_api", args={"n": n}).enqueue_and_wait(timeout=5) for n in range(5))
        )
        print("partner api:", results)

        worker.stop()
        runner = await running
        print(f"cancelled={runner.cancelled} snoozed={runner.snoozed}")


if __name__ == "__main__":
    asyncio.run(main())
