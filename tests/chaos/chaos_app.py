"""The worker process of the chaos suite: `python -m tests.chaos.chaos_app` (cwd: the repo root).

Configured by env (`WorkerPool` sets it): `CHAOS_BROKER`, `CHAOS_URL`, `CHAOS_PREFIX`,
`CHAOS_OPTIONS` (JSON keyword arguments of the broker class), `CHAOS_QUEUE`, `CHAOS_LEDGER`,
`CHAOS_TASKS` (tasks_limit, default 10), `CHAOS_GRACE` (graceful_shutdown_time, default 5),
`CHAOS_RETRY_DELAY` (seconds before each retry, default 0.2), `CHAOS_SLEEP_CAP` (runs in this
process sleep at most this long: a replacement finishes long jobs quickly).

The `work(sleep=0.0, fail=None)` actor logs its start ("S") and end ("E") in the ledger, sleeps
`sleep` seconds and raises `RuntimeError(fail)` when `fail` is set; once the worker settled its
message, "A" follows. The process logs "W" just before consuming, "X" when `Worker.run()`
returns and, on Kafka, "J"/"L" when it joins / leads its group. SIGTERM starts a graceful shutdown.
"""

from __future__ import annotations

import asyncio
import ctypes
import itertools
import logging
import os
import re
import signal
import sys
import time
from datetime import timedelta

from repid import MessageDependency, Router, Worker
from tests.chaos._harness import BrokerSettings, append_line

LEDGER = os.environ["CHAOS_LEDGER"]
QUEUE = os.environ["CHAOS_QUEUE"]
RETRY_DELAY = float(os.environ.get("CHAOS_RETRY_DELAY", "0.2"))
SLEEP_CAP = float(os.environ.get("CHAOS_SLEEP_CAP", "inf"))
_runs = itertools.count(1)


def _retry_policy(retry_number: int = 1) -> timedelta:
    return timedelta(seconds=RETRY_DELAY)


router = Router()


@router.actor(queue=QUEUE, retry_policy=_retry_policy)
async def work(message: MessageDependency, sleep: float = 0.0, fail: str | None = None) -> None:
    """One job of the chaos suite: logged, `sleep` seconds long, failing when `fail` is set."""
    pid = os.getpid()
    run = f"{pid}.{next(_runs)}"
    append_line(
        LEDGER, "S", run, message.key.id_, message.parameters.attempt, pid, f"{time.time():.6f}"
    )
    message.add_callback(lambda: append_line(LEDGER, "A", run, f"{time.time():.6f}"))
    outcome = "error"
    try:
        if min(sleep, SLEEP_CAP) > 0:
            await asyncio.sleep(min(sleep, SLEEP_CAP))
        if fail is not None:
            raise RuntimeError(fail)
        outcome = "ok"
    except asyncio.CancelledError:
        outcome = "cancelled"
        raise
    finally:
        append_line(LEDGER, "E", run, outcome, f"{time.time():.6f}")


class _GroupLeadership(logging.Handler):
    """Logs "J pid generation" when this process joins its group, "L pid generation" when it
    is elected the group's leader.

    noida-db never expels a crashed group leader (docs/brokers/kafka.md), so on it the kill
    scenarios must not SIGKILL the leader; this is how the test knows which process it is.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.generation = -1

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        joined = re.match(r"Joined group '.*' \(generation (\d+)\)", text)
        if joined:
            self.generation = int(joined.group(1))
            append_line(LEDGER, "J", os.getpid(), self.generation)
        elif text.startswith("Elected group leader"):
            append_line(LEDGER, "L", os.getpid(), self.generation)


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the test process dies (no orphans after an abort)."""
    if sys.platform == "linux":
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


async def main() -> None:
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger().handlers[0].setLevel(logging.WARNING)
    settings = BrokerSettings.from_env(os.environ)
    if settings.name == "kafka":
        coordinator = logging.getLogger("aiokafka.consumer.group_coordinator")
        coordinator.setLevel(logging.INFO)
        coordinator.addHandler(_GroupLeadership())
    connection = settings.connection()
    await connection.connect()
    worker = Worker(
        [router],
        tasks_limit=int(os.environ.get("CHAOS_TASKS", "10")),
        graceful_shutdown_time=float(os.environ.get("CHAOS_GRACE", "5")),
        handle_signals=[signal.SIGTERM, signal.SIGINT],
        _connection=connection,
    )
    append_line(LEDGER, "W", os.getpid(), f"{time.time():.6f}")
    try:
        await worker.run()
    finally:
        append_line(LEDGER, "X", os.getpid(), f"{time.time():.6f}")
        await connection.disconnect()


if __name__ == "__main__":
    _die_with_parent()
    asyncio.run(main())
