"""Lifecycle guarantees across worker *processes* sharing a network broker (issue 6).

Three `repid run` processes consume one queue; a ledger file written by every actor run (see
`shared_app.py`) says what ran where and when. Covered: each tick of a periodic job runs exactly
once; `max_concurrency` holds across processes where the broker shares state; live workers are
listed across processes and a killed one drops out after the staleness window.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from repid import Connection, Job, Queue
from tests.conformance.specs import RUN_ID

HERE = Path(__file__).parent
URLS = {
    "redis": os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/"),
    "kafka": "kafka://" + os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
}
DEADLINE = 15.0
COMMAND = [sys.executable, "-m", "repid.cli", "run", "shared_app:worker"]


def _ledger(path: Path) -> list[tuple[str, str, int, float]]:
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        event, actor, pid, at = line.split()
        rows.append((event, actor, int(pid), float(at)))
    return rows


async def _until(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Workers:
    """`count` worker processes of `shared_app:worker` on one broker URL and queue."""

    def __init__(self, url: str, queue: str, ledger: Path, tmp_path: Path) -> None:
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
            REPID_LEDGER=str(ledger),
            REPID_QUEUE=queue,
            REPID_HEARTBEAT="0.2",
        )
        self.url = url
        self.tmp_path = tmp_path
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int) -> None:
        for index in range(count):
            log = (self.tmp_path / f"worker{len(self.processes)}-{index}.log").open("wb")
            self.processes.append(
                subprocess.Popen(
                    [*COMMAND, "--broker", self.url],
                    env=self.env,
                    cwd=self.tmp_path,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )

    def logs(self) -> str:
        return "\n".join(p.read_text() for p in sorted(self.tmp_path.glob("worker*.log")))

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in self.processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(params=sorted(URLS))
def broker_name(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
async def conn(broker_name: str) -> AsyncIterator[Connection]:
    from repid.cli.target import connection_from_url

    connection = connection_from_url(URLS[broker_name])
    await connection.connect()
    try:
        yield connection
    finally:
        await connection.disconnect()


@pytest.fixture
async def queue(conn: Connection) -> AsyncIterator[Queue]:
    declared = Queue(f"mp_{RUN_ID}_{uuid4().hex[:8]}", _connection=conn)
    await declared.declare()
    try:
        yield declared
    finally:
        await declared.delete()


@pytest.fixture
def workers(broker_name: str, queue: Queue, tmp_path: Path) -> Iterator[tuple[Workers, Path]]:
    ledger = tmp_path / "ledger.log"
    group = Workers(URLS[broker_name], queue.name, ledger, tmp_path)
    try:
        yield group, ledger
    finally:
        group.stop()


async def test_each_tick_of_a_periodic_job_runs_once_across_three_workers(
    conn: Connection, queue: Queue, workers: tuple[Workers, Path]
) -> None:
    group, ledger = workers
    interval = 1.0
    # Three "deployments" schedule the same periodic job at start-up: one schedule results.
    for _ in range(3):
        await Job(
            "tick",
            queue=queue.name,
            id_=f"tick-{queue.name}",
            deferred_by=timedelta(seconds=interval),
            _connection=conn,
        ).enqueue()
    group.start(3)
    ticks = 4

    def runs() -> list[float]:
        return sorted(at for event, actor, _, at in _ledger(ledger) if actor == "tick")

    await _until(lambda: len(runs()) >= ticks, f"{ticks} ticks\n{group.logs()}", timeout=30)
    times = runs()
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    # A duplicate run of a tick would start within milliseconds of the first one.
    assert min(gaps) > 0.1, f"two runs of one tick: gaps {gaps}"
    span = times[ticks - 1] - times[0]
    assert span < (ticks - 1) * interval + 2.0, f"ticks were skipped: gaps {gaps}"


async def test_max_concurrency_holds_across_worker_processes(
    conn: Connection, queue: Queue, workers: tuple[Workers, Path]
) -> None:
    if not conn.message_broker.capabilities.shared_state:
        pytest.skip("broker declares shared_state=False: max_concurrency is per worker")
    group, ledger = workers
    jobs = 12
    for n in range(jobs):
        await Job("exclusive", queue=queue.name, args={"n": n}, _connection=conn).enqueue()
    group.start(3)

    def rows() -> list[tuple[str, str, int, float]]:
        return [row for row in _ledger(ledger) if row[1] == "exclusive"]

    await _until(
        lambda: sum(1 for row in rows() if row[0] == "end") >= jobs,
        f"{jobs} exclusive runs\n{group.logs()}",
        timeout=30,
    )
    running = 0
    for event, _, _, _ in sorted(rows(), key=lambda row: (row[3], row[0] == "start")):
        running += 1 if event == "start" else -1
        assert running <= 1, "two runs of a max_concurrency=1 actor overlapped"


async def test_live_workers_across_processes_and_a_killed_one_drops_out(
    conn: Connection, queue: Queue, workers: tuple[Workers, Path]
) -> None:
    if not conn.message_broker.capabilities.shared_state:
        pytest.skip("broker declares shared_state=False: each process lists its own workers")
    group, _ = workers
    group.start(3)
    pids = {p.pid for p in group.processes}

    async def listed() -> set[int]:
        return {w.pid for w in await conn.live_workers(stale_after=1.0) if queue.name in w.queues}

    deadline = time.monotonic() + DEADLINE
    while await listed() != pids:
        assert time.monotonic() < deadline, f"live workers never listed all 3\n{group.logs()}"
        await asyncio.sleep(0.05)
    [info] = [w for w in await conn.live_workers() if w.pid == group.processes[0].pid]
    assert (info.concurrency, info.queues) == (10, (queue.name,))

    victim = group.processes[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=10)
    while await listed() != pids - {victim.pid}:
        assert time.monotonic() < deadline, "the killed worker is still listed as live"
        await asyncio.sleep(0.05)
