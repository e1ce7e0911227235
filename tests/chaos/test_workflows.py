"""C-WF: diamond workflows while worker processes are SIGKILLed at random: every workflow ends
`succeeded`, no join completes twice, and duplicate step runs are bounded.

The bound: a step caught in flight by a kill runs again (as in C1). Its rerun enqueues again
only those of its children still `queued` (same job id); a child already marked `running` (the
worker's before-run hook) or finished is left alone, so it does not run a second time. So
duplicates <= in flight.
Redis only here (RabbitMQ and Kafka need a Redis store in the worker processes)."""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path

import pytest

from repid.workflows import Workflow, WorkflowHandle
from tests.chaos._harness import SIZE, Chaos, LedgerView, loss_figures, record_result, size

WORKFLOWS = size(200, 500)
WORKERS = 4
KILLS = size(3, 20)

pytestmark = pytest.mark.timeout(size(300, 1800))


@pytest.fixture(params=["redis"])
def broker_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _diamond(queue: str) -> Workflow:
    wf = Workflow("chaos-diamond", ttl=3600)
    a = wf.step("work", {"sleep": 0.01}, queue=queue, name="a")
    b = wf.step("work", {"sleep": 0.02}, [a], queue=queue, name="b")
    c = wf.step("work", {"sleep": 0.02}, [a], queue=queue, name="c")
    wf.step("work", {"sleep": 0.01}, [b, c], queue=queue, name="d")
    return wf


async def test_diamond_workflows_survive_random_sigkills(chaos: Chaos, tmp_path: Path) -> None:
    rng = random.Random(19)
    handles: list[WorkflowHandle] = []
    for first in range(0, WORKFLOWS, 100):
        batch = [_diamond(chaos.queue.name) for _ in range(first, min(first + 100, WORKFLOWS))]
        handles += await asyncio.gather(*(wf.enqueue(chaos.conn) for wf in batch))
    ids = [f"{h.id_}-{step}" for h in handles for step in "abcd"]
    chaos.pool.start(WORKERS)
    for point in sorted(rng.uniform(0.05, 0.85) for _ in range(KILLS)):
        target = point * len(ids)

        def reached(view: LedgerView, target: float = target) -> bool:
            return len(view.completed_ids()) >= target

        await chaos.until(reached, f"{point:.0%} of the steps completed", size(120, 900))
        victims = chaos.kill_candidates(busy=True) or chaos.kill_candidates(busy=False)
        assert victims, chaos.pool.logs()
        chaos.pool.kill(rng.choice(victims))
        chaos.pool.start(1)

    view = await chaos.until(
        lambda view: view.completed_ids() >= set(ids), "every step to complete", size(180, 900)
    )
    states = Counter()
    for handle in handles:
        status = await handle.wait(timeout=60)
        states[status.state] += 1
    figures = loss_figures(view, ids, settle_window=chaos.broker.settle_window)
    joins_settled = Counter(
        r.job for r in view.runs if r.job.endswith("-d") and r.outcome == "ok" and r.settled
    )
    per_step = Counter((r.job, r.attempt) for r in view.runs)
    figures["duplicates_by_step"] = dict(
        sorted(Counter(job[-1] for (job, _), n in per_step.items() for _ in range(n - 1)).items())
    )
    figures.update(
        workflows=WORKFLOWS,
        workers=WORKERS,
        succeeded=states["succeeded"],
        joins_completed_twice=sum(n > 1 for n in joins_settled.values()),
    )
    record_result("C-WF", chaos.broker.name, SIZE, figures)
    assert states == Counter(succeeded=WORKFLOWS), (states, figures)
    assert figures["lost"] == 0, figures
    assert figures["joins_completed_twice"] == 0, figures
    assert figures["duplicates"] <= figures["in_flight_at_kills"], figures
    assert not chaos.pool.crashes(), chaos.pool.crashes()
