"""A worker process for the Redis crash tests: `python worker_app.py` with its settings in env.

Every actor start is recorded in the Redis list `<prefix>started`, so the test sees what this
process took before it is killed. The actor sleeps for `REPID_SLEEP` seconds.
"""

from __future__ import annotations

import asyncio
import os

import redis.asyncio

from repid import Connection, RedisMessageBroker, Repid, Router, Worker

DSN = os.environ["REPID_REDIS_DSN"]
PREFIX = os.environ["REPID_PREFIX"]
QUEUE = os.environ["REPID_QUEUE"]
LEASE = float(os.environ.get("REPID_LEASE", "1.0"))
SLEEP = float(os.environ.get("REPID_SLEEP", "30"))


async def main() -> None:
    recorder = redis.asyncio.Redis.from_url(DSN)
    router = Router()

    @router.actor(queue=QUEUE)
    async def work(n: int) -> None:
        await recorder.rpush(f"{PREFIX}started", n)
        await asyncio.sleep(SLEEP)

    app = Repid(Connection(RedisMessageBroker(DSN, prefix=PREFIX, lease_duration=LEASE)))
    async with app.magic(auto_disconnect=True):
        await Worker(routers=[router], tasks_limit=5, handle_signals=[]).run()
    await recorder.aclose()


if __name__ == "__main__":
    asyncio.run(main())
