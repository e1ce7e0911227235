"""arq on Redis: `await pool.enqueue_job("noop", i)`; worker `arq.worker.Worker(max_jobs=C)`.

Runs in the arq virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

from typing import Any

from _common import REDIS_URL, JobCounter, NetCase, Producer, redis_delete_matching
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.worker import Worker, func


class ArqProducer(Producer):
    def __init__(self, pool: ArqRedis, queue: str, job_ids: list[str]) -> None:
        self.pool = pool
        self.queue = queue
        self.job_ids = job_ids

    async def enqueue(self, i: int) -> object:
        job = await self.pool.enqueue_job("noop", i, _queue_name=self.queue)
        assert job is not None
        self.job_ids.append(job.job_id)
        return job

    async def close(self) -> None:
        await self.pool.aclose()


class ArqCase(NetCase):
    case = "arq"
    framework = "arq"
    guarantees = (
        "enqueue returns after the MULTI/EXEC that stores the job (Redis durability as configured)"
    )
    notes = (
        "arq polls its queue (poll_delay=0.5 s by default), which bounds its latency from below",
        "job ids are recorded by the driver so the clean-up can delete arq:job/result keys",
    )

    def __init__(self) -> None:
        self.job_ids: list[str] = []

    def concurrency_label(self, concurrency: int) -> str:
        return f"max_jobs={concurrency}"

    async def producer(self, queue: str) -> Producer:
        pool = await create_pool(RedisSettings.from_dsn(REDIS_URL), default_queue_name=queue)
        return ArqProducer(pool, queue, self.job_ids)

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        async def noop(ctx: dict[str, Any], n: int) -> None:
            counter.hit(n)

        async def on_startup(ctx: dict[str, Any]) -> None:
            counter.ready()

        Worker(
            functions=[func(noop, name="noop")],
            redis_settings=RedisSettings.from_dsn(REDIS_URL),
            queue_name=queue,
            max_jobs=concurrency,
            on_startup=on_startup,
            handle_signals=False,
        ).run()

    async def cleanup(self, queues: list[str]) -> None:
        prefixes = ("arq:job:", "arq:result:", "arq:in-progress:", "arq:retry:")
        keys = [p + job_id for job_id in self.job_ids for p in prefixes]
        redis_delete_matching([f"{q}*" for q in queues], keys)


if __name__ == "__main__":
    ArqCase().main()
