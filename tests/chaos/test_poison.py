"""C8: a poison job (its actor always raises) is dead-lettered after exactly `retries` retries.

Poison jobs with `retries=R` are mixed with healthy ones and consumed by two worker processes.
The ledger must show attempts 1..R+1 of each poison job, each run once and each ending in an
error; the dead part of the queue must hold each poison job once, with its error and R+1
attempts; every healthy job completes once.
"""

from __future__ import annotations

from collections import Counter

import pytest

from tests.chaos._harness import SIZE, Chaos, loss_figures, percentile, record_result, size, until

POISON = size(5, 50)
HEALTHY = size(100, 2000)
RETRIES = 3

pytestmark = pytest.mark.timeout(size(120, 900))


async def test_c8_poison_job_is_dead_lettered_after_exactly_its_retries(chaos: Chaos) -> None:
    healthy = await chaos.enqueue(HEALTHY // 2, sleep=0.005)
    errors = {}
    for n in range(POISON):
        [job_id] = await chaos.enqueue(1, fail=f"poison {n}", retries=RETRIES)
        errors[job_id] = f"poison {n}"
    healthy += await chaos.enqueue(HEALTHY - HEALTHY // 2, sleep=0.005)
    chaos.pool.start(2)

    async def all_dead() -> bool:
        return {m.key.id_ for m in await chaos.dead_letters()} >= set(errors)

    view = await chaos.until(
        lambda view: (
            view.completed_ids() >= set(healthy)
            and sum(1 for r in view.runs if r.job in errors and r.settled) >= POISON * (RETRIES + 1)
        ),
        "every healthy job and every attempt of the poison jobs",
        timeout=size(60, 600),
    )
    await until(all_dead, "the poison jobs in the dead letters", timeout=30)
    letters = await chaos.dead_letters()

    figures = loss_figures(view, [*healthy, *errors], dead=[m.key.id_ for m in letters])
    to_dead = []
    for job_id in errors:
        runs = sorted(view.runs_of(job_id), key=lambda r: r.start)
        attempts = Counter(r.attempt for r in runs)
        assert attempts == Counter(range(1, RETRIES + 2)), (job_id, attempts)
        assert all(r.outcome == "error" for r in runs), runs
        to_dead.append(runs[-1].start - runs[0].start)
    by_id = Counter(m.key.id_ for m in letters)
    assert by_id == Counter(set(errors)), f"dead letters {by_id} != the poison jobs"
    for message in letters:
        info = message.dead_letter
        assert info is not None
        assert (info.reason, info.error_type, info.error_message, info.attempts) == (
            "exception",
            "RuntimeError",
            errors[message.key.id_],
            RETRIES + 1,
        )
    figures.update(
        poison_jobs=POISON,
        retries=RETRIES,
        poison_runs=sum(len(view.runs_of(j)) for j in errors),
        first_to_last_attempt_p50_s=round(percentile(to_dead, 50) or 0.0, 3),
    )
    record_result("C8", chaos.broker.name, SIZE, figures)
    assert figures["lost"] == 0, figures
    assert figures["dead_lettered"] == POISON, figures
    assert figures["duplicates"] == 0, figures
    assert not chaos.pool.crashes(), chaos.pool.crashes()
