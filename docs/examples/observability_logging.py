import asyncio
import json
import logging
import sys

from repid import Connection, InMemoryMessageBroker, Job, Repid, Router, Worker
from repid.observability import JOB_FIELDS, JobLogMiddleware


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with the job's fields."""

    def format(self, record: logging.LogRecord) -> str:
        line = {"level": record.levelname, "logger": record.name, "message": record.getMessage()}
        line.update({f: getattr(record, f) for f in JOB_FIELDS if hasattr(record, f)})
        return json.dumps(line)


handler = logging.StreamHandler(sys.stdout)
handler.setFormatter(JsonFormatter())
jobs_logger = logging.getLogger("repid.jobs")  # or "repid", for repid's other logs too
jobs_logger.addHandler(handler)
jobs_logger.setLevel(logging.INFO)  # DEBUG adds the "enqueued" and "started" records

router = Router()


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor
async def charge(order_id: int) -> None:
    raise ValueError(f"card declined for order {order_id}")


async def main() -> None:
    app = Repid(Connection(InMemoryMessageBroker()), middlewares=[JobLogMiddleware()])
    async with app.magic(auto_disconnect=True):
        worker = Worker(routers=[router], messages_limit=2, tasks_limit=1)
        await worker.declare_all_queues()
        await Job("add", id_="sum-1", args={"a": 1, "b": 2}).enqueue()
        await Job("charge", id_="order-7", args={"order_id": 7}).enqueue()
        await worker.run()


if __name__ == "__main__":
    asyncio.run(main())
