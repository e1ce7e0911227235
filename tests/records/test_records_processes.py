"""Job records across processes (issue 17): a worker in one process, `job_state` in the test's
and `repid job` in a third, all on Redis."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import redis

from repid import Connection, Job, Queue, RedisBucketBroker, RedisMessageBroker
from repid.records import JobStatus

DSN = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).parents[2]


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repid.cli", *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_a_worker_process_writes_records_another_process_reads() -> None:
    prefix = f"repid-records-{uuid4().hex[:8]}:"
    queue_name = f"q_{uuid4().hex[:8]}"
    env = dict(os.environ)
    env |= {"REPID_TEST_PREFIX": prefix, "REPID_TEST_QUEUE": queue_name}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    conn = Connection(
        RedisMessageBroker(DSN, prefix=prefix),
        results_bucket_broker=RedisBucketBroker(DSN, prefix=prefix, use_result_bucket=True),
        records=True,
    )
    try:
        async with conn:
            queue = Queue(queue_name, _connection=conn)
            await queue.declare()
            ok = await Job("work", queue=queue_name, args={"n": 2}, _connection=conn).enqueue()
            bad = await Job("fail", queue=queue_name, args={"n": 3}, _connection=conn).enqueue()
            assert ok.last_id is not None
            assert bad.last_id is not None
            queued = await conn.job_state(bad.last_id)
            assert queued is not None
            assert queued.status is JobStatus.QUEUED

            run = cli(env, "run", "tests.records.records_app:app", "--burst")
            assert run.returncode == 0, run.stderr

            done = await conn.job_state(ok.last_id)
            dead = await conn.job_state(bad.last_id)
            assert done is not None
            assert done.status is JobStatus.SUCCEEDED
            assert dead is not None
            assert dead.status is JobStatus.DEAD
            assert done.worker is not None
            assert done.worker == dead.worker
            assert done.worker.split(":")[1] != str(os.getpid()), "another process ran it"
            (error,) = dead.errors
            assert (error.type, error.message) == ("ValueError", "failure 3")

            shown = cli(env, "job", bad.last_id, "tests.records.records_app:app")
            assert shown.returncode == 0, shown.stderr
            assert "status    dead" in shown.stdout
            assert "attempt 1" in shown.stdout
            assert "ValueError: failure 3" in shown.stdout

            as_json = cli(env, "job", ok.last_id, "tests.records.records_app:app", "--json")
            assert json.loads(as_json.stdout)["status"] == "succeeded"

            dead_list = cli(
                env, "dead", "list", queue_name, "tests.records.records_app:app", "--errors"
            )
            assert dead_list.returncode == 0, dead_list.stderr
            assert "    attempt 1  " in dead_list.stdout
            assert "ValueError: failure 3" in dead_list.stdout

            missing = cli(env, "job", "no-such-job", "tests.records.records_app:app")
            assert missing.returncode == 1
            assert "no record" in missing.stderr
            await queue.delete()
    finally:
        client = redis.Redis.from_url(DSN)
        keys = list(client.scan_iter(match=f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
