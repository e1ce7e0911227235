"""C6: deferred jobs across worker restarts: none runs early; how late they run.

Jobs with `deferred_until` spread over a few seconds (short: 60 over 4 s; full: 600 over
30 s) are enqueued to the shared server; two worker processes consume them (one on noida-db:
see `NOIDA_WORKERS`). In the middle the
workers are restarted: SIGTERM to all, then new ones (full size: later also a SIGKILL of one
worker and a replacement). The test keeps each job's due time (the ledger has the job id and
the actor's start time), so the figures come from the ledger: `early` (a first run that
started before its due time, with 1 ms of clock granularity: must be 0) and the lateness
(first start - due) at p50 / p99 / max. Jobs due while no worker runs are late by the
restart's gap; that is what p99 shows.

`deferred_by` is not used: in repid it makes a job recurring (run every interval), not
delayed once.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import time
from datetime import UTC, datetime

import pytest

from repid import Job
from tests.chaos._harness import (
    FULL,
    NOIDA,
    Chaos,
    LedgerView,
    loss_figures,
    percentile,
    record_result,
    size,
)
from tests.chaos._servers import fatal_excerpts, log_figures

JOBS = size(60, 600)
SPREAD = size(4.0, 30.0)
"""Seconds over which the due times are spread (starting 1 s after the enqueue)."""
WORKERS = 2
NOIDA_WORKERS = 1
"""Kafka on noida-db: one worker. A member joining a group whose member is committing gets
that member an IllegalGeneration answer to its commit (a real Kafka answers
RebalanceInProgress); aiokafka then rejoins under a new member id, noida-db keeps the old id as
the group's leader for good (it never expels a member), nobody assigns the partitions and the
group rejoins the same generation forever (reproduced: a second worker joining one that holds
deferred jobs). With one worker no member ever joins an active group."""
SLEEP = 0.05
"""Each run's length (so that, at the full size's SIGKILL, some worker is running one)."""
GRANULARITY = 0.001
"""A run may start this much before its due time (clock granularity) without being early."""

pytestmark = pytest.mark.timeout(size(90, 600))


async def _enqueue_deferred(chaos: Chaos, dues: list[float]) -> dict[str, float]:
    """Enqueue one `work` job per due time (`deferred_until`); job id -> due time."""
    jobs = [
        Job(
            "work",
            queue=chaos.queue,
            args={"sleep": SLEEP},
            deferred_until=datetime.fromtimestamp(due, tz=UTC),
            _connection=chaos.conn,
        )
        for due in dues
    ]
    for first in range(0, len(jobs), 200):
        await asyncio.gather(*(job.enqueue() for job in jobs[first : first + 200]))
    return {str(job._last_id): due for job, due in zip(jobs, dues, strict=True)}


async def _restart_all(chaos: Chaos) -> None:
    """SIGTERM every live worker, wait for them to exit, start as many new ones."""
    alive = chaos.pool.alive()
    for process in alive:
        chaos.pool.terminate(process)
    for process in alive:
        await chaos.pool.wait_exit(process, timeout=30)
    chaos.pool.start(len(alive))


def _candidates(chaos: Chaos) -> list[subprocess.Popen[bytes]]:
    candidates = chaos.kill_candidates()
    if chaos.broker.name == "kafka" and NOIDA:
        # Only in a formed group whose current leader is known (so that it is left out).
        view = chaos.ledger.read()
        latest = max((generation for generation, _ in view.joins), default=None)
        if not chaos.group_formed() or not view.leaders or max(view.leaders)[0] != latest:
            return []
    return candidates


async def _kill_one(chaos: Chaos) -> bool:
    """SIGKILL one worker that is running an actor (polling up to 10 s for one) and start a
    replacement; False if none was. On noida-db only in a formed Kafka group, never its leader:
    the server does not expel a crashed leader or a member killed while joining, and the group
    would stall for good (seen: two workers rejoining the same generation for minutes)."""
    deadline = time.monotonic() + 10
    while not (candidates := _candidates(chaos)):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    chaos.pool.kill(candidates[0])
    chaos.pool.start(1)
    return True


def lateness_figures(view: LedgerView, dues: dict[str, float]) -> dict[str, float | int | None]:
    """Early runs (must be 0) and lateness of each job's first run, from the ledger."""
    first: dict[str, float] = {}
    for run in view.runs:
        if run.job in dues and (run.job not in first or run.start < first[run.job]):
            first[run.job] = run.start
    late = [first[job] - due for job, due in dues.items() if job in first]
    early = [job for job, due in dues.items() if job in first and first[job] < due - GRANULARITY]

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 4)

    return {
        "early": len(early),
        "earliest_s": rounded(min(late, default=None)),
        "lateness_p50_s": rounded(percentile(late, 50)),
        "lateness_p99_s": rounded(percentile(late, 99)),
        "lateness_max_s": rounded(max(late, default=None)),
    }


async def test_c6_deferred_jobs_never_run_early_across_worker_restarts(chaos: Chaos) -> None:
    rng = random.Random(6)
    start = time.time() + 1.0
    dues = sorted(start + rng.uniform(0.0, SPREAD) for _ in range(JOBS))
    due_of = await _enqueue_deferred(chaos, dues)
    workers = NOIDA_WORKERS if chaos.broker.name == "kafka" and NOIDA else WORKERS
    chaos.pool.start(workers)

    # The chaos schedule: points in the spread of due times (sleeps space them in time).
    await asyncio.sleep(max(0.0, start + SPREAD * 0.4 - time.time()))
    await _restart_all(chaos)
    killed = False
    if FULL:
        await asyncio.sleep(max(0.0, start + SPREAD * 0.7 - time.time()))
        killed = await _kill_one(chaos)

    view = await chaos.until(
        lambda view: view.completed_ids() >= set(due_of),
        "every deferred job to complete",
        timeout=SPREAD + size(60, 300),
    )
    figures = loss_figures(view, list(due_of))
    figures.update(
        workers=workers,
        restarts=1,
        killed=int(killed),
        spread_s=SPREAD,
        **lateness_figures(view, due_of),
        **log_figures(chaos.pool.logs_dir),
    )
    record_result(
        "C6",
        chaos.broker.name,
        "full" if FULL else "short",
        figures,
        note="deferred_until spread over the run; all workers restarted (SIGTERM) mid-spread"
        + ("; later one SIGKILLed" if FULL else ""),
    )
    assert figures["early"] == 0, figures
    assert figures["lost"] == 0, figures
    assert not fatal_excerpts(chaos.pool.logs_dir), fatal_excerpts(chaos.pool.logs_dir)
