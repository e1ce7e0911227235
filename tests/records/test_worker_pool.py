"""`WorkerPool` (issue 17): N worker processes from Python over the CLI's supervisor, on Redis
with job records, started, stopped gracefully and joined."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from uuid import uuid4

import redis

from repid import Connection, Job, Queue, RedisBucketBroker, RedisMessageBroker, WorkerPool
from repid.records import JobStatus

DSN = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).parents[2]


async def test_a_pool_runs_jobs_in_two_processes_and_stops_gracefully() -> None:
    prefix = f"repid-pool-{uuid4().hex[:8]}:"
    queue_name = f"q_{uuid4().hex[:8]}"
    env = {
        "REPID_TEST_PREFIX": prefix,
        "REPID_TEST_QUEUE": queue_name,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    conn = Connection(
        RedisMessageBroker(DSN, prefix=prefix),
        results_bucket_broker=RedisBucketBroker(DSN, prefix=prefix, use_result_bucket=True),
        records=True,
    )
    pool = WorkerPool("tests.records.records_app:app", processes=2, env=env)
    try:
        async with conn:
            queue = Queue(queue_name, _connection=conn)
            await queue.declare()
            pool.start()
            ids = []
            for n in range(6):
                sent = await Job(
                    "work", queue=queue_name, args={"n": n}, _connection=conn
                ).enqueue()
                ids.append(sent.last_id)
            deadline = time.monotonic() + 60
            while True:
                records = [await conn.job_state(i) for i in ids if i is not None]
                if all(r is not None and r.status is JobStatus.SUCCEEDED for r in records):
                    break
                assert time.monotonic() < deadline, f"jobs not done: {records}"
                await asyncio.sleep(0.05)
            assert len(pool.pids) == 2
            assert os.getpid() not in pool.pids
            pool.stop()
            code = await asyncio.to_thread(pool.join, 60)
            assert code == 0
            assert pool.pids == []
            await queue.delete()
    finally:
        if pool._thread is not None and pool._thread.is_alive():
            pool.stop()
            pool.join(30)
        client = redis.Redis.from_url(DSN)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
