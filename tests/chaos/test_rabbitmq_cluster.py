"""A 3-node RabbitMQ cluster with quorum queues loses the node the app is connected to.

One node of three is SIGKILLed while a producer publishes with confirms and a worker consumes,
both through one broker given the three nodes: every job whose `enqueue()` returned runs,
duplicates stay bounded by what was in flight, and consumption resumes on the surviving nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from uuid import uuid4

import pytest

from repid import Connection, Job, Queue, Router, Worker
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from tests.brokers.rabbitmq._cluster import (
    RabbitCluster,
    rabbit_cluster_fixture,  # noqa: F401
)
from tests.conformance.support import running, wait_until

pytestmark = pytest.mark.broker("rabbitmq")

JOBS = 200
TASKS = 10


async def test_a_node_of_three_killed_mid_run_loses_no_job(rabbit_cluster: RabbitCluster) -> None:
    victim = rabbit_cluster.nodes[0]  # the node the broker connects to first
    broker = RabbitMessageBroker(
        rabbit_cluster.urls, queue_type="quorum", reconnect_backoff=0.3, timeout=30.0
    )
    conn = Connection(broker)
    await conn.connect()
    queue = Queue(f"cluster_{uuid4().hex[:8]}", _connection=conn)
    await queue.declare()
    router = Router()
    runs: Counter[int] = Counter()
    confirmed: set[int] = set()
    killed_at: list[float] = []

    @router.actor(queue=queue.name)
    async def work(n: int) -> None:
        runs[n] += 1
        await asyncio.sleep(0.005)  # a little work, so that jobs are in flight at the kill

    async def produce() -> None:
        for n in range(JOBS):
            if n == JOBS // 3:
                killed_at.append(time.monotonic())
                await asyncio.to_thread(victim.stop, True)  # SIGKILL of the node's processes
            await Job("work", queue=queue.name, args={"n": n}, _connection=conn).enqueue()
            confirmed.add(n)

    worker = Worker([router], tasks_limit=TASKS, handle_signals=[], _connection=conn)
    async with running(worker, stop_timeout=30):
        await asyncio.wait_for(produce(), 120)
        await wait_until(lambda: set(runs) >= confirmed, "every confirmed job to run", 120)
    assert confirmed == set(range(JOBS)), "an enqueue failed instead of failing over"
    assert set(runs) == confirmed
    duplicates = sum(count - 1 for count in runs.values())
    # At most what was in flight when the node died: the worker's prefetch on each of the
    # three priority queues, and the publishes waiting for a confirm.
    assert duplicates <= 3 * TASKS + 1, f"{duplicates} duplicates"
    failover = broker._link.failover
    assert failover is not None
    assert failover.current != 0, "the broker did not move to another node"
    print(f"cluster: {JOBS} jobs, {duplicates} duplicates, killed node {victim.node}")
    await queue.delete()
    await conn.disconnect()
