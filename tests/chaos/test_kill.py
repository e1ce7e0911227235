"""C1: workers SIGKILLed at random while a queue drains: nothing lost, duplicates bounded.

`W` worker processes consume `N` jobs (each sleeping 0-20 ms); `K` times, at random points of
the run's progress, a random worker is SIGKILLed and a replacement started. The ledger gives
the figures: lost (must be 0), duplicates (must be at most the runs the kills cut short), and
the delay from each kill to the restart of its interrupted jobs elsewhere.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.chaos._harness import (
    FULL,
    Chaos,
    LedgerView,
    loss_figures,
    record_result,
    size,
    until,
)

JOBS = size(600, 10_000)
WORKERS = size(2, 4)
KILLS = size(3, 20)

pytestmark = pytest.mark.timeout(size(120, 1800))


async def test_c1_random_sigkills_lose_nothing(chaos: Chaos) -> None:
    rng = random.Random(1)
    sleeps = [rng.uniform(0.0, 0.02) for _ in range(JOBS)]
    ids = await chaos.enqueue(JOBS, sleep=lambda index: sleeps[index])
    chaos.pool.start(WORKERS)
    # Kill points: fractions of the jobs completed, spread over the run.
    points = sorted(rng.uniform(0.05, 0.85) for _ in range(KILLS))

    for point in points:
        target = point * JOBS

        def reached(view: LedgerView, target: float = target) -> bool:
            return len(view.completed_ids()) >= target

        await chaos.until(
            reached,
            f"{point:.0%} of the jobs completed",
            timeout=size(90, 600),
        )
        await until(lambda: bool(chaos.kill_candidates()), "a worker to kill", 30)
        chaos.pool.kill(rng.choice(chaos.kill_candidates()))
        chaos.pool.start(1)
        await asyncio.sleep(rng.uniform(0.0, 0.2))  # the chaos schedule's jitter, not a wait

    view = await chaos.until(
        lambda view: view.completed_ids() >= set(ids),
        "every job to complete",
        timeout=size(120, 900),
    )
    figures = loss_figures(view, ids, settle_window=chaos.broker.settle_window)
    figures["workers"] = WORKERS
    record_result("C1", chaos.broker.name, "full" if FULL else "short", figures)
    assert figures["lost"] == 0, figures
    assert figures["kills"] == KILLS
    assert figures["duplicates"] <= figures["in_flight_at_kills"], figures
    assert not chaos.pool.crashes(), chaos.pool.crashes()
