"""Random DAGs (at most 12 steps, random failures) on the in-memory broker: a step runs iff all
its ancestors succeeded, every join is triggered exactly once, the rest is skipped."""

from __future__ import annotations

import asyncio
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from repid import Connection, InMemoryBucketBroker, InMemoryMessageBroker, Queue, Router, Worker
from repid.workflows import Workflow

from . import PROPERTY_SETTINGS


@st.composite
def dags(draw: st.DrawFn) -> list[tuple[list[int], bool]]:
    """Step i: (its parents among steps < i, whether it fails)."""
    n = draw(st.integers(min_value=1, max_value=12))
    steps = []
    for i in range(n):
        parents = draw(st.lists(st.integers(0, i - 1), max_size=3, unique=True)) if i else []
        fails = draw(st.integers(0, 3)) == 0  # a quarter of the steps fail
        steps.append((sorted(parents), fails))
    return steps


async def _run(dag: list[tuple[list[int], bool]]) -> tuple[Counter[str], dict[str, str]]:
    conn = Connection(
        InMemoryMessageBroker(), results_bucket_broker=InMemoryBucketBroker(use_result_bucket=True)
    )
    await conn.connect()
    queue = Queue("dags", _connection=conn)
    await queue.declare()
    runs: Counter[str] = Counter()
    router = Router()

    @router.actor(queue="dags")
    async def node(name: str, fail: bool) -> dict[str, int]:
        runs[name] += 1
        if fail:
            raise RuntimeError(f"{name} fails")
        return {}

    wf = Workflow("random")
    steps = []
    for i, (parents, fail) in enumerate(dag):
        steps.append(
            wf.step(
                "node",
                {"name": f"s{i}", "fail": fail},
                [steps[p] for p in parents],
                queue="dags",
                name=f"s{i}",
            )
        )
    handle = await wf.enqueue(conn)
    worker = Worker([router], _connection=conn, handle_signals=[], graceful_shutdown_time=1.0)
    task = asyncio.create_task(worker.run())
    try:
        status = await handle.wait(timeout=30)
    finally:
        worker.stop()
        while not task.done():
            worker.stop()
            await asyncio.wait({task}, timeout=0.05)
        await conn.disconnect()
    return runs, {name: s.status for name, s in status.steps.items()}


@settings(PROPERTY_SETTINGS, max_examples=40, deadline=None)
@given(dags())
def test_steps_run_iff_all_ancestors_succeeded_and_joins_fire_once(
    dag: list[tuple[list[int], bool]],
) -> None:
    runs, states = asyncio.run(_run(dag))
    ok: dict[int, bool] = {}  # ran and succeeded
    for i, (parents, fail) in enumerate(dag):
        should_run = all(ok[p] for p in parents)
        name = f"s{i}"
        assert runs[name] == (1 if should_run else 0), (name, dag, runs)
        ok[i] = should_run and not fail
        expected = ("failed" if fail else "succeeded") if should_run else "skipped"
        assert states[name] == expected, (name, dag, states)
