"""In-memory broker: per-actor limits are shared by every worker of the broker (one process)."""

from __future__ import annotations

import asyncio

from repid import Connection, InMemoryMessageBroker, Job, Queue, Router, Worker


async def test_max_concurrency_holds_across_two_workers_of_one_broker() -> None:
    conn = Connection(InMemoryMessageBroker())
    await conn.connect()
    await Queue(_connection=conn).declare()
    router = Router()
    running = 0
    peak = 0
    done: list[int] = []
    all_done = asyncio.Event()

    @router.actor(max_concurrency=1)
    async def exclusive(n: int) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        done.append(n)
        if len(done) == 6:
            all_done.set()

    for n in range(6):
        await Job("exclusive", args={"n": n}, _connection=conn).enqueue()
    workers = [
        Worker(routers=[router], tasks_limit=4, handle_signals=[], _connection=conn)
        for _ in range(2)
    ]
    tasks = [asyncio.create_task(worker.run()) for worker in workers]
    try:
        await asyncio.wait_for(all_done.wait(), 5)
    finally:
        for worker in workers:
            worker.stop()
        await asyncio.gather(*tasks)
    assert peak == 1
    assert sorted(done) == list(range(6))
    runners = [task.result() for task in tasks]
    assert sum(runner.succeeded for runner in runners) == 6
    assert all(runner.processed > 0 for runner in runners)  # both workers took part
