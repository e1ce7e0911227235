"""Server time of the dashboard's overview with many queues full of dead letters.

    python benchmarks/dashboard.py                      # 50 queues x 10,000 dead, in-memory
    python benchmarks/dashboard.py --broker redis --queues 50 --dead 10000

Fills the queues (enqueue, then consume and nack every message: real dead letters), then times
`GET /` and `GET /queues/<name>` (the first page of dead letters) through the ASGI app in
process (httpx ASGITransport: no network, the server's own time), median of `--rounds`. Target
(issue 24): the overview under 300 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from uuid import uuid4

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx

from repid import Connection, InMemoryBucketBroker, InMemoryMessageBroker, Job, Queue
from repid.dashboard import create_app


def _connection(broker: str, prefix: str) -> Connection:
    if broker == "memory":
        return Connection(
            InMemoryMessageBroker(),
            results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True),
        )
    from repid import RedisBucketBroker, RedisMessageBroker

    dsn = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
    return Connection(
        RedisMessageBroker(dsn, prefix=prefix),
        results_bucket_broker=RedisBucketBroker(dsn, prefix=prefix, use_result_bucket=True),
    )


async def _fill(conn: Connection, name: str, dead: int) -> None:
    queue = Queue(name, _connection=conn)
    await queue.declare()
    payload = {"order": 1, "note": "x" * 100}
    for start in range(0, dead, 500):
        await asyncio.gather(
            *(
                Job("charge", queue=name, args=payload, _connection=conn).enqueue()
                for _ in range(min(500, dead - start))
            )
        )
    async with contextlib.aclosing(queue.get_messages(stop_when_empty=True)) as messages:
        async for message in messages:
            await message.nack()


async def _time(client: httpx.AsyncClient, path: str, rounds: int) -> list[float]:
    out = []
    for _ in range(rounds):
        start = time.perf_counter()
        response = await client.get(path)
        out.append((time.perf_counter() - start) * 1000)
        assert response.status_code == 200, response.text[:300]
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", choices=["memory", "redis"], default="memory")
    parser.add_argument("--queues", type=int, default=50)
    parser.add_argument("--dead", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    prefix = f"repid-bench-dash:{uuid4().hex[:8]}:"
    conn = _connection(args.broker, prefix)
    names = [f"q{i:02d}" for i in range(args.queues)]
    async with conn:
        try:
            t0 = time.perf_counter()
            for name in names:
                await _fill(conn, name, args.dead)
            print(
                f"filled {args.queues} queues x {args.dead} dead letters ({args.broker}) in "
                f"{time.perf_counter() - t0:.1f} s",
                file=sys.stderr,
            )
            app = create_app(conn)
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://b") as client:
                await client.get("/")  # warm-up
                overview = await _time(client, "/", args.rounds)
                queue = await _time(client, f"/queues/{names[0]}", args.rounds)
            load = os.getloadavg()
            print(f"| page | median ms | min ms | max ms |  (load {load[0]:.2f})")
            print("|---|---:|---:|---:|")
            for label, times in (("overview /", overview), ("queue page 1", queue)):
                print(
                    f"| {label} | {statistics.median(times):.1f} | {min(times):.1f} | "
                    f"{max(times):.1f} |"
                )
        finally:
            for name in names:
                with contextlib.suppress(Exception):
                    await conn.raw_message_broker.queue_delete(name)


if __name__ == "__main__":
    asyncio.run(main())
