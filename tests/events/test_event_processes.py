"""Job events across processes (issue 17): a worker subprocess publishes its events on Redis,
the test process subscribes with `connection.events()` and receives them."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from uuid import uuid4

import redis

from repid import Connection, EventKind, Job, JobEvent, Queue, RedisMessageBroker

DSN = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).parents[2]
DEADLINE = 60.0


async def test_the_test_process_receives_the_events_of_a_worker_process() -> None:
    prefix = f"repid-events-{uuid4().hex[:8]}:"
    queue_name = f"q_{uuid4().hex[:8]}"
    env = dict(os.environ) | {"REPID_TEST_PREFIX": prefix, "REPID_TEST_QUEUE": queue_name}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    conn = Connection(RedisMessageBroker(DSN, prefix=prefix), publish_events=True)
    try:
        async with conn, conn.events(queue=queue_name) as events:
            queue = Queue(queue_name, _connection=conn)
            await queue.declare()
            sent = await Job("work", queue=queue_name, args={"n": 2}, _connection=conn).enqueue()
            seen: list[JobEvent] = []
            async with asyncio.timeout(DEADLINE):
                seen.append(await anext(events))  # published here, before the worker starts
                worker = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "repid.cli",
                    "run",
                    "tests.events.events_app:app",
                    "--burst",
                    env=env,
                    cwd=ROOT,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
                try:
                    async for event in events:
                        seen.append(event)
                        if event.kind is EventKind.SUCCEEDED:
                            break
                finally:
                    _, stderr = await worker.communicate()
            assert worker.returncode == 0, stderr.decode()
    finally:
        client = redis.Redis.from_url(DSN)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()

    assert [(e.kind, e.job_id) for e in seen] == [
        (kind, sent.last_id)
        for kind in (EventKind.ENQUEUED, EventKind.STARTED, EventKind.SUCCEEDED)
    ]
    enqueued, started, succeeded = seen
    assert enqueued.worker is None
    assert started.worker is not None
    assert started.worker.split(":")[1] != str(os.getpid()), "another process ran it"
    assert succeeded.worker == started.worker
    assert succeeded.duration is not None
