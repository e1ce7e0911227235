"""The chaos suite's harness: broker settings, the run ledger, worker processes, figures, results.

How a scenario uses it (see `tests/chaos/conftest.py` for the `chaos` fixture that builds one
`Chaos` per test on the shared servers; build your own with `Chaos.open(...)` for a private
server or a proxy):

    async def test_x(chaos: Chaos) -> None:
        ids = await chaos.enqueue(600, sleep=0.01)          # jobs of the `work` actor
        chaos.pool.start(2)                                  # `python -m tests.chaos.chaos_app`
        await chaos.until(lambda v: len(v.started_ids()) > 50, "some runs")
        chaos.pool.kill(chaos.pool.alive()[0])               # SIGKILL, logged as a "K" line
        chaos.pool.start(1)                                  # a replacement
        await chaos.until(lambda v: v.completed_ids() >= set(ids), "every job")
        figures = loss_figures(chaos.ledger.read(), ids)
        record_result("C1", chaos.broker.name, "short", figures)
        assert figures["lost"] == 0

The ledger is a file every worker process appends to with one `write(2)` per line on an
O_APPEND descriptor (atomic with respect to the other appenders); the test appends its kills and
SIGTERMs to the same file. A line cut short by a SIGKILL has no trailing newline or the wrong
field count and is ignored (counted in `LedgerView.torn`), so it cannot corrupt the figures.
Line formats (tab separated, times are `time.time()`):

    S  run  job  attempt  pid  time        an actor run started (`run` = "<pid>.<n>", unique)
    E  run  outcome  time                  it ended: "ok", "error" or "cancelled"
    A  run  time                           the worker settled its message (ack, retry, dead)
    W  pid  time                           a worker process is about to consume
    X  pid  time                           a worker process's `Worker.run()` returned
    K  pid  time                           the test SIGKILLed that worker
    T  pid  time                           the test sent SIGTERM to that worker
    J  pid  generation                     Kafka: that worker joined its group
    L  pid  generation                     Kafka: that worker was elected its group's leader

Sizes: `FULL` is true under `REPID_CHAOS=full` (`scripts/chaos.sh`); scenarios pick their
short (default test run, CI) or full size with `size(short, full)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from uuid import uuid4

from repid import (
    Connection,
    Job,
    KafkaMessageBroker,
    Message,
    MessageCategory,
    Queue,
    RedisMessageBroker,
    SqliteMessageBroker,
)
from repid.brokers.postgres import PostgresMessageBroker
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from tests.conformance.specs import RUN_ID  # the run's id: every key, queue and topic holds it

ROOT = Path(__file__).resolve().parents[2]
"""The repository root: worker processes run with it as their working directory."""

BROKERS = ("redis", "rabbitmq", "kafka", "nats", "postgres", "sqlite")
"""Every real broker; each scenario runs on all of them that it applies to."""

SERVER_BROKERS = ("redis", "rabbitmq", "kafka", "nats", "postgres")
"""The brokers with a server: C2 (server restart) and C3 (connections dropped by a proxy) run on
these only. SQLite has no server and no connection to drop (its processes open one file), so
those two scenarios do not apply to it; its kill, shutdown, deferred, long-actor and poison
scenarios run like the others'."""

FULL = os.environ.get("REPID_CHAOS", "").lower() == "full"
"""Full-size scenarios (`scripts/chaos.sh`); the default run uses the short sizes."""

NOIDA = "REPID_KAFKA_BOOTSTRAP" not in os.environ
"""Kafka tests run against noida-db (not a real Kafka): see docs/brokers/kafka.md."""

SIZE = "full" if FULL else "short"
"""The size name `record_result` takes for this run."""

DEFAULT_URLS = {
    "redis": os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/"),
    "kafka": "kafka://" + os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
    "sqlite": f"sqlite:///{tempfile.gettempdir()}/repid-chaos-{RUN_ID}.db",
    "postgres": os.environ.get("REPID_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"),
    "nats": os.environ.get("REPID_NATS_SERVERS", "nats://127.0.0.1:4222"),
}

T = TypeVar("T")


def size(short: T, full: T) -> T:
    """`full` under `REPID_CHAOS=full`, else `short`."""
    return full if FULL else short


# --------------------------------------------------------------------------- broker settings


@dataclass(frozen=True)
class BrokerSettings:
    """Which broker, where, and with which constructor options (the same in every process).

    `options` are keyword arguments of the broker class (`lease_duration` for Redis,
    `session_timeout`, `partitions`, `commit_on_revoke`... for Kafka, `timeout` for RabbitMQ);
    they must be JSON-serialisable, since the worker processes receive them through the env.
    """

    name: str
    url: str
    prefix: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def default(cls, name: str, url: str | None = None, **options: Any) -> BrokerSettings:
        """The chaos defaults for `name` ("redis", "rabbitmq", "kafka"), updated by `options`.

        Redis: a 2 s lease (a killed worker's deliveries come back after it). Kafka: 8 partitions
        (several workers consume in parallel) and the minimum 6 s session timeout; on noida-db
        also `commit_on_revoke=False` (it refuses commits during a rebalance).
        """
        base: dict[str, Any]
        if name == "redis":
            base = {"lease_duration": 2.0}
            prefix = f"repid-test:{RUN_ID}:chaos:"  # the Redis spec's clean-up deletes these
        elif name == "rabbitmq":
            base = {"timeout": 10.0}
            prefix = f"repid-test-{RUN_ID}-"
        elif name == "kafka":
            base = {"partitions": 8, "session_timeout": 6.0, "commit_interval": 0.1}
            if NOIDA:
                base["commit_on_revoke"] = False
            prefix = f"repid-{RUN_ID}-chaos-"
        elif name == "sqlite":
            base = {"lease_duration": 2.0}  # as Redis: a killed worker's jobs return after it
            prefix = ""  # one file per run; queue names are unique per test
        elif name == "postgres":
            base = {"lease_duration": 2.0, "poll_interval": 0.5}
            prefix = f"repid_test_{RUN_ID}"  # the schema; the Postgres spec's exit hook drops it
        elif name == "nats":
            base = {"lease_duration": 2.0, "operation_timeout": 10.0}
            prefix = f"repid-test-{RUN_ID}-chaos-"  # the NATS spec's clean-up deletes these
        else:
            raise ValueError(f"unknown broker {name!r}: expected one of {BROKERS}")
        base.update(options)
        return cls(name, url or DEFAULT_URLS[name], prefix, base)

    @property
    def settle_window(self) -> float:
        """Seconds a message the worker settled may still be unacknowledged at the broker.

        Redis and PostgreSQL: 0 (an acknowledgement returns once the server applied it; a
        Postgres ack is committed, only its WAL flush may lag). RabbitMQ: 0.1 s
        (`basic.ack` is not confirmed: one still in the client's or the kernel's buffers dies
        with the process; measured up to ~20 ms). Kafka: offsets are committed every
        `commit_interval`, plus the commit's round trip (0.1 s). NATS: 0.1 s (an ack is not
        confirmed, as on RabbitMQ).
        """
        if self.name in ("redis", "sqlite", "postgres"):
            return 0.0  # an acknowledgement returns once it is applied (committed, for SQL)
        if self.name == "kafka":
            return float(self.options.get("commit_interval", 0.2)) + 0.1
        return 0.1

    def connection(self) -> Connection:
        """A new, unconnected connection to this broker."""
        options = dict(self.options)
        if self.name == "redis":
            return Connection(RedisMessageBroker(self.url, prefix=self.prefix, **options))
        if self.name == "rabbitmq":
            return Connection(RabbitMessageBroker(self.url, prefix=self.prefix, **options))
        if self.name == "kafka":
            bootstrap = self.url.removeprefix("kafka://")
            return Connection(KafkaMessageBroker(bootstrap, topic_prefix=self.prefix, **options))
        if self.name == "sqlite":
            return Connection(SqliteMessageBroker(self.url, **options))
        if self.name == "postgres":
            return Connection(PostgresMessageBroker(self.url, schema=self.prefix, **options))
        if self.name == "nats":
            from repid.brokers.nats import NatsMessageBroker

            return Connection(NatsMessageBroker(self.url, prefix=self.prefix, **options))
        raise ValueError(f"unknown broker {self.name!r}")

    def env(self) -> dict[str, str]:
        """The env variables that make `chaos_app` build the same connection."""
        return {
            "CHAOS_BROKER": self.name,
            "CHAOS_URL": self.url,
            "CHAOS_PREFIX": self.prefix,
            "CHAOS_OPTIONS": json.dumps(dict(self.options)),
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BrokerSettings:
        """The settings `env()` described (used by the worker process)."""
        return cls(
            env["CHAOS_BROKER"],
            env["CHAOS_URL"],
            env["CHAOS_PREFIX"],
            json.loads(env.get("CHAOS_OPTIONS", "{}")),
        )


# --------------------------------------------------------------------------------- ledger


def append_line(path: str | os.PathLike[str], *fields: object) -> None:
    """Append one tab-separated line to the ledger with a single `write(2)`."""
    line = ("\t".join(str(f) for f in fields) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass
class Run:
    """One actor run: started in `pid` at `start`; `end`/`outcome` are None if it never ended."""

    run: str
    job: str
    attempt: int
    pid: int
    start: float
    end: float | None = None
    outcome: str | None = None
    settled: float | None = None
    """When the worker settled the message (after `end`); None if it never did."""


@dataclass
class LedgerView:
    """Everything the ledger holds at one moment, parsed."""

    runs: list[Run] = field(default_factory=list)
    ready: dict[int, float] = field(default_factory=dict)
    """pid -> time the worker process was about to consume."""
    exits: dict[int, float] = field(default_factory=dict)
    """pid -> time `Worker.run()` returned (a clean exit)."""
    kills: list[tuple[int, float]] = field(default_factory=list)
    terms: list[tuple[int, float]] = field(default_factory=list)
    joins: list[tuple[int, int]] = field(default_factory=list)
    """Kafka: (generation, pid) of each group join, in ledger order."""
    leaders: list[tuple[int, int]] = field(default_factory=list)
    """Kafka: (generation, pid) of each group-leader election, in ledger order."""
    torn: int = 0
    """Lines ignored because a kill cut them short."""

    def leader(self) -> int | None:
        """Kafka: the pid elected leader in the latest generation (None before any)."""
        return max(self.leaders)[1] if self.leaders else None

    def runs_of(self, job: str) -> list[Run]:
        return [r for r in self.runs if r.job == job]

    def started_ids(self) -> set[str]:
        return {r.job for r in self.runs}

    def completed_ids(self) -> set[str]:
        """Jobs with at least one run that ended "ok"."""
        return {r.job for r in self.runs if r.outcome == "ok"}

    def ended_ids(self) -> set[str]:
        """Jobs with at least one run that ended (any outcome)."""
        return {r.job for r in self.runs if r.end is not None}

    def running(self, pid: int | None = None) -> list[Run]:
        """Runs started and not ended (in `pid`, if given)."""
        return [r for r in self.runs if r.end is None and (pid is None or r.pid == pid)]


class Ledger:
    """The ledger file: appended to by every worker process and the test; read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._view = LedgerView()
        self._open: dict[str, Run] = {}

    def append(self, *fields: object) -> None:
        append_line(self.path, *fields)

    def read(self) -> LedgerView:
        """Parse what was appended since the last call; returns the whole (cumulative) view."""
        if not self.path.exists():
            return self._view
        with self.path.open("rb") as file:
            file.seek(self._offset)
            chunk = file.read()
        complete = chunk.rfind(b"\n") + 1  # a line still being written waits for next time
        self._offset += complete
        view = self._view
        for raw in chunk[:complete].decode(errors="replace").splitlines():
            parts = raw.split("\t")
            try:
                self._parse(view, parts)
            except (ValueError, IndexError, KeyError):
                view.torn += 1
        return view

    def _parse(self, view: LedgerView, parts: list[str]) -> None:
        kind = parts[0]
        if kind == "S" and len(parts) == 6:
            run = Run(parts[1], parts[2], int(parts[3]), int(parts[4]), float(parts[5]))
            view.runs.append(run)
            self._open[run.run] = run
        elif kind == "E" and len(parts) == 4:
            run = self._open[parts[1]]
            run.outcome, run.end = parts[2], float(parts[3])
        elif kind == "A" and len(parts) == 3:
            self._open.pop(parts[1]).settled = float(parts[2])
        elif kind == "L" and len(parts) == 3:
            view.leaders.append((int(parts[2]), int(parts[1])))
        elif kind == "J" and len(parts) == 3:
            view.joins.append((int(parts[2]), int(parts[1])))
        elif kind in "WXKT" and len(parts) == 3:
            pid, at = int(parts[1]), float(parts[2])
            if kind == "W":
                view.ready[pid] = at
            elif kind == "X":
                view.exits[pid] = at
            elif kind == "K":
                view.kills.append((pid, at))
            else:
                view.terms.append((pid, at))
        else:
            raise ValueError(kind)


# ----------------------------------------------------------------------- worker processes

_RECOVERED = "aiokafka.consumer.group_coordinator ERROR Unexpected error in coordinator routine"
"""A logged traceback the Kafka consumer recovers from (see `WorkerPool.crashes`)."""


class WorkerPool:
    """Worker processes (`python -m tests.chaos.chaos_app`) on one broker, queue and ledger.

    `worker_env` adds env for the processes: `CHAOS_TASKS` (tasks_limit, default 10),
    `CHAOS_GRACE` (graceful_shutdown_time, default 5), `CHAOS_RETRY_DELAY` (seconds before a
    retry, default 0.2); `start(..., **env)` overrides it per process.
    """

    def __init__(
        self,
        settings: BrokerSettings,
        queue: str,
        ledger: Ledger,
        logs: Path,
        worker_env: Mapping[str, str] | None = None,
    ) -> None:
        self.settings = settings
        self.ledger = ledger
        self.logs_dir = logs
        self.env = {
            **os.environ,
            **settings.env(),
            "CHAOS_QUEUE": queue,
            "CHAOS_LEDGER": str(ledger.path),
            **(worker_env or {}),
        }
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self, count: int = 1, **env: str) -> list[subprocess.Popen[bytes]]:
        """Start `count` worker processes (returns them); `env` overrides the pool's env."""
        started = []
        for _ in range(count):
            log = (self.logs_dir / f"worker-{len(self.processes)}.log").open("wb")
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos.chaos_app"],
                env={**self.env, **env},
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            self.processes.append(process)
            started.append(process)
        return started

    def alive(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.processes if p.poll() is None]

    def kill(self, process: subprocess.Popen[bytes]) -> float:
        """SIGKILL `process`, log a "K" line, wait for it to die; returns the kill time."""
        at = time.time()
        process.send_signal(signal.SIGKILL)
        self.ledger.append("K", process.pid, f"{at:.6f}")
        process.wait(timeout=30)
        return at

    def terminate(self, process: subprocess.Popen[bytes]) -> float:
        """Send SIGTERM (a graceful shutdown) and log a "T" line; returns the time. No wait."""
        at = time.time()
        self.ledger.append("T", process.pid, f"{at:.6f}")
        process.send_signal(signal.SIGTERM)
        return at

    async def wait_exit(self, process: subprocess.Popen[bytes], timeout: float) -> int:
        """Wait (polling) for `process` to exit; returns its exit code."""
        deadline = time.monotonic() + timeout
        while (code := process.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"worker {process.pid} still running after {timeout}s")
            await asyncio.sleep(0.05)
        return code

    def logs(self, tail: int = 4000) -> str:
        """The last `tail` characters of every worker's output (for failure messages)."""
        texts = []
        for path in sorted(self.logs_dir.glob("worker-*.log")):
            text = path.read_text(errors="replace")
            if text.strip():
                texts.append(f"--- {path.name}\n{text[-tail:]}")
        return "\n".join(texts)

    def crashes(self) -> list[str]:
        """Tracebacks in the workers' output (a crash is a failure of the chaos suite).

        One is not a crash: aiokafka logs "Unexpected error in coordinator routine" with a
        traceback when its group coordination task dies; the consumer then replaces the client
        and joins the group again (tests/chaos/test_kafka_coordination.py).
        """
        found = []
        for path in sorted(self.logs_dir.glob("worker-*.log")):
            records = re.split(r"\n(?=\d{4}-\d\d-\d\d \d\d:)", path.read_text(errors="replace"))
            for record in records:
                if "Traceback (most recent call last)" not in record:
                    continue
                if _RECOVERED in record.split("\n", 1)[0]:
                    continue
                found.append(f"--- {path.name}\n{record[-4000:]}")
        return found

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every live process, then SIGKILL what is left after `timeout` seconds."""
        for process in self.alive():
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for process in self.processes:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# ------------------------------------------------------------------------------ a scenario


async def until(
    condition: Callable[[], bool | Awaitable[bool]],
    what: str | Callable[[], str],
    timeout: float,
) -> None:
    """Poll `condition` (sync or async) every 50 ms until it holds; AssertionError after
    `timeout` seconds, with `what` (or what it returns) in the message."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            message = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        await asyncio.sleep(0.05)


@dataclass
class Chaos:
    """One scenario's world: a connected test-side connection, a fresh queue, a ledger, a pool."""

    broker: BrokerSettings
    conn: Connection
    queue: Queue
    ledger: Ledger
    pool: WorkerPool

    @classmethod
    @contextlib.asynccontextmanager
    async def open(
        cls,
        settings: BrokerSettings,
        directory: Path,
        *,
        worker_env: Mapping[str, str] | None = None,
        delete_queue: bool = True,
    ) -> AsyncIterator[Chaos]:
        """Declare a fresh queue on `settings`, yield the world, then stop workers and clean up.

        `directory` (e.g. pytest's `tmp_path`) holds the ledger and the workers' logs.
        """
        await asyncio.to_thread(directory.mkdir, parents=True, exist_ok=True)
        conn = settings.connection()
        await conn.connect()
        queue = Queue(f"chaos_{RUN_ID}_{uuid4().hex[:8]}", _connection=conn)
        ledger = Ledger(directory / "ledger.tsv")
        pool = WorkerPool(settings, queue.name, ledger, directory, worker_env)
        try:
            await queue.declare()
            yield cls(settings, conn, queue, ledger, pool)
        finally:
            pool.stop()
            try:
                if delete_queue:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(queue.delete(), 30)
            finally:
                await conn.disconnect()

    async def enqueue(
        self,
        count: int,
        *,
        actor: str = "work",
        sleep: float | Callable[[int], float] = 0.0,
        fail: str | None = None,
        batch: int = 500,
        **job_options: Any,
    ) -> list[str]:
        """Enqueue `count` jobs of `chaos_app`'s `work` actor; returns their ids in order.

        `sleep` is how long each run takes (a number, or a function of the job's index);
        `fail` makes every run raise `RuntimeError(fail)`. `job_options` go to `Job` (e.g.
        `retries=3`, `deferred_by=...`).
        """
        ids: list[str] = []
        for first in range(0, count, batch):
            jobs = []
            for index in range(first, min(first + batch, count)):
                seconds = sleep(index) if callable(sleep) else sleep
                args: dict[str, Any] = {"sleep": seconds}
                if fail is not None:
                    args["fail"] = fail
                jobs.append(
                    Job(actor, queue=self.queue, args=args, _connection=self.conn, **job_options)
                )
            await asyncio.gather(*(job.enqueue() for job in jobs))
            ids.extend(str(job._last_id) for job in jobs)  # the generated message id
        return ids

    async def dead_letters(self) -> list[Message]:
        """The messages now in the dead part of the queue (browsed, left in place)."""
        found: list[Message] = []
        messages = self.queue.get_messages(category=MessageCategory.DEAD, stop_when_empty=True)
        try:
            async for message in messages:
                found.append(message)
        finally:
            await messages.aclose()  # type: ignore[attr-defined]  # an async generator
        return found

    async def holds(
        self, condition: Callable[[LedgerView], bool], what: str, seconds: float
    ) -> LedgerView:
        """Watch the ledger for `seconds`: AssertionError as soon as `condition` fails.

        For what must *not* happen (a second run): the observation window is the claim's
        scope, so it is a bounded watch, not a wait for something to happen.
        """
        deadline = time.monotonic() + seconds
        while True:
            view = self.ledger.read()
            assert condition(view), f"{what} stopped holding\n{self.pool.logs()}"
            if time.monotonic() > deadline:
                return view
            await asyncio.sleep(0.05)

    def kill_candidates(self, busy: bool = True) -> list[subprocess.Popen[bytes]]:
        """Live workers worth a SIGKILL: consuming and (if `busy`) running an actor now.

        On noida-db the Kafka group's current leader is left out: the server never expels a
        crashed leader, so the group would stall for good (a real Kafka expels it after the
        session timeout; with `REPID_KAFKA_BOOTSTRAP` set, any worker can be killed).
        """
        view = self.ledger.read()
        alive = [p for p in self.pool.alive() if p.pid in view.ready]
        if self.broker.name == "kafka" and NOIDA:
            alive = [p for p in alive if p.pid != view.leader()]
        return [p for p in alive if view.running(p.pid)] if busy else alive

    def group_formed(self) -> bool:
        """Kafka: every live worker joined the group's latest generation (no rebalance is
        pending that the test knows of). Always True on the other brokers."""
        if self.broker.name != "kafka":
            return True
        view = self.ledger.read()
        if not view.joins:
            return False
        latest = max(generation for generation, _ in view.joins)
        members = {pid for generation, pid in view.joins if generation == latest}
        return members == {p.pid for p in self.pool.alive()}

    def recovered(self) -> bool:
        """The pool is whole again after its kills: every run a kill cut short (unsettled)
        started again in another process, and every live worker has started a run."""
        view = self.ledger.read()
        restarted: dict[str, list[Run]] = defaultdict(list)
        for run in view.runs:
            restarted[run.job].append(run)
        for run, _ in interrupted_runs(view):
            if not any(r.pid != run.pid and r.start >= run.start for r in restarted[run.job]):
                return False
        started = {run.pid for run in view.runs}
        return all(p.pid in started for p in self.pool.alive())

    async def until(
        self, condition: Callable[[LedgerView], bool], what: str, timeout: float = 60.0
    ) -> LedgerView:
        """Poll the ledger until `condition(view)` holds; the failure message has the logs."""
        await until(
            lambda: condition(self.ledger.read()),
            lambda: f"{what}\n{self.pool.logs()}",
            timeout,
        )
        return self.ledger.read()


# --------------------------------------------------------------------------------- figures


def percentile(values: Iterable[float], q: float) -> float | None:
    """The `q`-th percentile (0-100, nearest rank) of `values`, None when there are none."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def interrupted_runs(view: LedgerView, settle_window: float = 0.0) -> list[tuple[Run, float]]:
    """Runs whose message a SIGKILL caught unacknowledged at the broker, with the kill time.

    That is every run started in the killed pid before the kill and either never settled (cut
    short, or ended but not yet settled) or settled less than `settle_window` seconds before
    the kill: an acknowledgement still in transit (RabbitMQ's `basic.ack` is not confirmed) or
    an offset not yet committed (Kafka commits every `commit_interval`) is lost with the
    process, and the broker delivers the message again.
    """
    killed_at = dict(view.kills)
    return [
        (run, killed_at[run.pid])
        for run in view.runs
        if run.pid in killed_at
        and run.start <= killed_at[run.pid]
        and (run.settled is None or run.settled > killed_at[run.pid] - settle_window)
    ]


def redelivery_delays(view: LedgerView, settle_window: float = 0.0) -> list[float]:
    """For each interrupted run: seconds from the kill to the next start of that job elsewhere."""
    delays = []
    by_job: dict[str, list[Run]] = defaultdict(list)
    for run in view.runs:
        by_job[run.job].append(run)
    for run, killed in interrupted_runs(view, settle_window):
        later = [r.start for r in by_job[run.job] if r.pid != run.pid and r.start >= run.start]
        if later:
            delays.append(max(0.0, min(later) - killed))
    return delays


def loss_figures(
    view: LedgerView,
    enqueued: Collection[str],
    dead: Collection[str] = (),
    settle_window: float = 0.0,
) -> dict[str, Any]:
    """The no-loss figures of a run, from the ledger (and the dead-lettered ids, if any).

    - `lost`: enqueued jobs neither completed ("ok" run) nor in `dead`.
    - `duplicates`: runs beyond the first of each (job, attempt) — a retry is a new attempt,
      not a duplicate; a redelivery after a kill keeps its attempt and counts.
    - `completed_twice`: "ok" runs beyond the first per job (work done twice to the end).
    - `in_flight_at_kills`: runs whose message a kill caught unacknowledged at the broker
      (`interrupted_runs`; pass `BrokerSettings.settle_window`), of which
      `unsettled_at_kills` had not been settled by the worker at all.
    - `redelivery_p50/p99/max`: seconds from a kill to the restart of its interrupted jobs.
    """
    expected = set(enqueued)
    completed = view.completed_ids() & expected
    dead_ids = set(dead) & expected
    per_attempt = Counter((r.job, r.attempt) for r in view.runs if r.job in expected)
    ok_runs = Counter(r.job for r in view.runs if r.outcome == "ok" and r.job in expected)
    delays = redelivery_delays(view, settle_window)
    in_flight = interrupted_runs(view, settle_window)
    return {
        "enqueued": len(expected),
        "completed": len(completed),
        "dead_lettered": len(dead_ids),
        "lost": len(expected - completed - dead_ids),
        "runs": sum(per_attempt.values()),
        "duplicates": sum(n - 1 for n in per_attempt.values()),
        "completed_twice": sum(n - 1 for n in ok_runs.values()),
        "kills": len(view.kills),
        "in_flight_at_kills": len(in_flight),
        "unsettled_at_kills": sum(1 for run, _ in in_flight if run.settled is None),
        "redelivered": len(delays),
        "redelivery_p50_s": _rounded(percentile(delays, 50)),
        "redelivery_p99_s": _rounded(percentile(delays, 99)),
        "redelivery_max_s": _rounded(max(delays, default=None)),
        "torn_lines": view.torn,
    }


# --------------------------------------------------------------------------------- results


def record_outcome(test: str, outcome: str) -> None:
    """Append a test's outcome ("passed", "failed"...) to `$REPID_CHAOS_RESULTS` when set."""
    path = os.environ.get("REPID_CHAOS_RESULTS")
    if path:
        append_line(path, json.dumps({"kind": "outcome", "test": test, "outcome": outcome}))


def record_result(
    scenario: str,
    broker: str,
    size_name: str,
    figures: Mapping[str, Any],
    note: str = "",
) -> None:
    """Append one scenario's figures to `$REPID_CHAOS_RESULTS` (JSON lines) when it is set.

    `scenario` is "C1".."C8", `size_name` "short" or "full"; `note` says what differs on this
    broker (an exclusion, a weaker bound). `scripts/chaos.sh` renders the file into
    docs/chaos.md and docs/chaos-results.json (`python -m tests.chaos.report`).
    """
    path = os.environ.get("REPID_CHAOS_RESULTS")
    if not path:
        return
    entry = {
        # "tests/chaos/test_kill.py::test_c1...[redis] (call)": joined with the test's outcome
        "test": os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" (", 1)[0],
        "scenario": scenario,
        "broker": broker,
        "size": size_name,
        "figures": dict(figures),
        "note": note,
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    append_line(path, json.dumps(entry, sort_keys=True))
