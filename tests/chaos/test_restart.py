"""C2: the broker server restarted once mid-run: nothing lost, consumption resumes by itself.

Each broker runs as a private server started by the test (`_servers.py`). A first batch of
jobs is enqueued and two worker processes start on it; once a quarter of it has run, the
server is killed (SIGKILL: the harshest restart; SIGTERM for noida-db, see `KILL`) and started
again with the same data directory, while the test keeps enqueuing a second batch one job at
a time (an enqueue that raises during the outage is retried as a new job and counted in
`enqueue_errors`; only jobs whose enqueue returned are expected). The workers are never
touched: every job must complete.

Redis keeps its promise here only because the private server writes an append-only file
fsynced on every write (`--appendonly yes --appendfsync always`): a Redis without persistence
forgets its queues on a restart, and nothing can be "not lost" then.

Figures: lost (0), duplicates, the outage (until the server's port accepts connections
again), and `resume_delay_s`: from then to the first actor run started after that.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repid import Job
from tests.chaos._harness import (
    FULL,
    SERVER_BROKERS,
    BrokerSettings,
    Chaos,
    LedgerView,
    loss_figures,
    record_result,
    size,
    until,
)
from tests.chaos._servers import (
    KafkaServer,
    NatsServer,
    RabbitServer,
    RedisChaosServer,
    fatal_excerpts,
    log_figures,
    make_server,
    settings_url,
)

JOBS = size(300, 3000)
"""Jobs per batch (one before the restart, one enqueued during and after it)."""
SLEEP = 0.005
WORKERS = 2

pytestmark = pytest.mark.timeout(size(150, 1500))


@pytest.fixture(scope="module", params=SERVER_BROKERS)  # SQLite has no server
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RedisChaosServer | RabbitServer | KafkaServer | NatsServer]:
    """A private server per broker, shared by this module's tests (RabbitMQ starts slowly)."""
    name: str = request.param
    instance = make_server(name, tmp_path_factory.mktemp(f"{name}-server"))
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


KILL = {"redis": True, "rabbitmq": True, "kafka": False, "postgres": True, "nats": True}
"""SIGKILL (True) or SIGTERM per broker. Redis (append-only, fsync always) and RabbitMQ
(persistent messages are confirmed once on disk) keep what they acknowledged through a SIGKILL.
noida-db writes to disk in the background: a SIGKILL loses its last moment of writes, even a
topic's partitions, so the Kafka restart is a clean one (SIGTERM). PostgreSQL: the whole
server process group is SIGKILLed (a crash; the restart replays the WAL)."""

QUIET_STOP = {"redis": False, "rabbitmq": False, "kafka": True, "postgres": False, "nats": False}
"""Hold enqueues while the server is being stopped. noida-db 0.2.3 acknowledges (acks=all)
writes that arrive while it shuts down on SIGTERM and then does not have them after the restart
(reproduced with a bare aiokafka producer): a server-side loss no client can prevent. Enqueues
still hit the outage (they fail and are retried until the server is back). The private Kafka
server is always noida-db (`REPID_KAFKA_BOOTSTRAP` does not apply to C2)."""


async def _restart(
    server: RedisChaosServer | RabbitServer | KafkaServer | NatsServer, gate: asyncio.Lock
) -> tuple[float, float]:
    """Stop (see `KILL`) and start again; (time it went down, time its port opened again)."""
    async with gate if QUIET_STOP[server.name] else contextlib.nullcontext():
        down = time.time()
        await asyncio.to_thread(server.stop, KILL[server.name])
    await asyncio.to_thread(server.start)
    return down, server.opened_at


async def _enqueue_through(chaos: Chaos, count: int, gate: asyncio.Lock) -> tuple[list[str], int]:
    """Enqueue `count` jobs one at a time, retrying (as a new job) whatever raised."""
    ids: list[str] = []
    errors = 0
    deadline = time.monotonic() + 120
    while len(ids) < count:
        job = Job("work", queue=chaos.queue, args={"sleep": SLEEP}, _connection=chaos.conn)
        try:
            async with gate:
                await asyncio.wait_for(job.enqueue(), 30)
        except Exception:
            errors += 1
            assert time.monotonic() < deadline, "enqueue never worked again after the restart"
            await asyncio.sleep(0.05)  # spacing the retries, not waiting for something
            continue
        ids.append(str(job._last_id))
    return ids, errors


async def test_c2_broker_restart_loses_nothing_and_consumption_resumes(
    server: RedisChaosServer | RabbitServer | KafkaServer | NatsServer, tmp_path: Path
) -> None:
    settings = BrokerSettings.default(server.name, url=settings_url(server.name, server.url))
    async with Chaos.open(settings, tmp_path) as chaos:
        first = await chaos.enqueue(JOBS, sleep=SLEEP)
        workers = chaos.pool.start(WORKERS)
        pids = {p.pid for p in workers}
        # Both workers connected (a worker that cannot connect when it starts exits: that is
        # not what is tested here) and a quarter of the first batch has run.
        await chaos.until(
            lambda view: len(view.completed_ids()) >= JOBS // 4 and pids <= set(view.ready),
            "both workers consuming and a quarter of the first batch done",
            timeout=size(60, 300),
        )
        gate = asyncio.Lock()
        restart = asyncio.ensure_future(_restart(server, gate))
        second, errors = await _enqueue_through(chaos, JOBS, gate)
        down_at, back_at = await restart
        expected = set(first) | set(second)

        def missing() -> str:
            done = chaos.ledger.read().completed_ids()
            return (
                f"every job to complete: {len(set(first) - done)} of the first batch and "
                f"{len(set(second) - done)} of the second never completed "
                f"(server back at +{back_at - down_at:.2f}s, {errors} enqueue errors)"
            )

        await until(
            lambda: chaos.ledger.read().completed_ids() >= expected,
            lambda: f"{missing()}\n{chaos.pool.logs()}",
            timeout=size(90, 900),
        )
        view = chaos.ledger.read()
        figures = loss_figures(view, [*first, *second])
        after = [run.start for run in view.runs if run.start >= back_at]
        figures.update(
            workers=WORKERS,
            enqueue_errors=errors,
            outage_s=round(back_at - down_at, 3),
            resume_delay_s=round(min(after) - back_at, 3) if after else None,
            **log_figures(tmp_path),
        )
        record_result(
            "C2",
            server.name,
            "full" if FULL else "short",
            figures,
            note=(
                f"private server restarted once ({'SIGKILL' if KILL[server.name] else 'SIGTERM'})"
                + (", appendonly + appendfsync always" if server.name == "redis" else "")
            ),
        )
        assert figures["lost"] == 0, figures
        assert all(p.poll() is None for p in workers), "a worker process exited\n" + (
            chaos.pool.logs()
        )
        assert len(chaos.pool.processes) == WORKERS  # nobody restarted them
        assert not fatal_excerpts(tmp_path), fatal_excerpts(tmp_path)
        _assert_runs_after(view, back_at)


def _assert_runs_after(view: LedgerView, back_at: float) -> None:
    assert any(run.start >= back_at for run in view.runs), "nothing ran after the restart"
