"""C4: SIGTERM with jobs running: they finish within the grace period, or go back to the queue.

Phase 1: a worker (grace 2 s) runs jobs of 0.5 s; SIGTERM while they run: every one of them
ends "ok" in that worker before the grace period is over, the process exits by itself, and no
job runs again anywhere. Phase 2: a worker (grace 1 s) runs jobs of 60 s; SIGTERM: they are
cancelled when the grace period ends, the process exits, and a replacement (whose runs are cut
to 50 ms) runs every one of them to the end with the *same* attempt number (the interruption
did not count as an attempt). Nothing is lost.
"""

from __future__ import annotations

import pytest

from tests.chaos._harness import SIZE, Chaos, LedgerView, loss_figures, record_result, size

JOBS = size(8, 10)  # at most the worker's tasks_limit (10): all run when the SIGTERM lands
ROUNDS = size(1, 5)
SHORT, SHORT_GRACE = 0.5, 2.0
LONG, LONG_GRACE = 60.0, 1.0
MARGIN = 5.0  # start-up of the shutdown and disconnect, on a loaded 2-core machine

pytestmark = pytest.mark.timeout(size(120, 600))


async def _terminate_while_running(
    chaos: Chaos, ids: list[str], grace: float
) -> tuple[int, float, LedgerView]:
    """Start a worker, wait until it runs all `ids`, SIGTERM it, wait for its exit."""
    [worker] = chaos.pool.start(1, CHAOS_GRACE=str(grace))
    await chaos.until(
        lambda view: {r.job for r in view.running(worker.pid)} >= set(ids),
        f"the worker to run all {len(ids)} jobs at once",
    )
    sent = chaos.pool.terminate(worker)
    code = await chaos.pool.wait_exit(worker, grace + MARGIN + 10)
    view = chaos.ledger.read()
    assert code == 0, f"exit code {code}\n{chaos.pool.logs()}"
    assert worker.pid in view.exits, "Worker.run() did not return"
    return worker.pid, sent, view


async def test_c4_sigterm_finishes_or_returns_running_jobs(chaos: Chaos) -> None:
    all_ids: list[str] = []
    exits: list[float] = []
    finished_late = returned = attempts_counted = 0
    for _ in range(ROUNDS):
        # Phase 1: jobs shorter than the grace period finish in the stopping worker.
        short = await chaos.enqueue(JOBS, sleep=SHORT)
        pid, sent, view = await _terminate_while_running(chaos, short, SHORT_GRACE)
        exits.append(view.exits[pid] - sent)
        for job in short:
            [run] = view.runs_of(job)
            assert (run.pid, run.outcome) == (pid, "ok"), run
            assert run.end is not None
            finished_late += run.end > sent + SHORT_GRACE
        # Phase 2: jobs longer than the grace period are cancelled and go back to the queue.
        long = await chaos.enqueue(JOBS, sleep=LONG)
        pid, sent, view = await _terminate_while_running(chaos, long, LONG_GRACE)
        exits.append(view.exits[pid] - sent)
        for job in long:
            [run] = view.runs_of(job)
            assert (run.pid, run.outcome) == (pid, "cancelled"), run
            assert run.end is not None, run
            assert run.end >= sent + LONG_GRACE - 0.1, f"cancelled before the grace ended: {run}"
        [replacement] = chaos.pool.start(1, CHAOS_SLEEP_CAP="0.05")
        returned_ids = set(long)
        view = await chaos.until(
            lambda view: view.completed_ids() >= returned_ids,  # noqa: B023 - awaited here
            "the replacement to run the returned jobs",
        )
        for job in long:
            first, *again = view.runs_of(job)
            assert [(r.pid, r.outcome) for r in again] == [(replacement.pid, "ok")], again
            returned += 1
            attempts_counted += again[0].attempt != first.attempt
        chaos.pool.stop()
        all_ids += short + long

    view = chaos.ledger.read()
    figures = loss_figures(view, all_ids)
    figures.update(
        running_at_sigterm=2 * JOBS * ROUNDS,
        finished_in_grace=JOBS * ROUNDS - finished_late,
        returned_to_queue=returned,
        attempts_counted=attempts_counted,
        exit_after_sigterm_max_s=round(max(exits), 3),
    )
    record_result("C4", chaos.broker.name, SIZE, figures)
    assert figures["lost"] == 0, figures
    assert finished_late == 0, figures
    assert attempts_counted == 0, figures
    assert figures["completed_twice"] == 0, figures
    assert max(exits) < max(SHORT_GRACE, LONG_GRACE) + MARGIN, figures
    assert not chaos.pool.crashes(), chaos.pool.crashes()
