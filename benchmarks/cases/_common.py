"""Helpers shared by the case scripts.

Every case script is run in a fresh interpreter (possibly a peer's virtualenv, where repid is not
installed), so this module uses the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class CaseResult:
    """What one case script reports: one JSON line on stdout.

    `enqueue_s` and `drain_s` are wall-clock seconds of the two phases. A phase that does not exist
    for a framework is `None`, and `notes` says why; `total_s` is always the time from the first
    enqueue call to the moment the N-th job has run.
    """

    case: str
    framework: str
    version: str
    n: int
    concurrency: str
    enqueue_s: float | None
    drain_s: float | None
    total_s: float
    peak_rss_mb: float
    rss_after_setup_mb: float
    jobs_run: int
    ran_during_enqueue: int
    notes: list[str] = field(default_factory=list)

    def emit(self) -> None:
        """Print the result as the last line of stdout, which the orchestrator parses."""
        sys.stdout.write(json.dumps(asdict(self)) + "\n")
        sys.stdout.flush()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS reports bytes.
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def parse_args(description: str, default_concurrency: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--n", type=int, default=100_000, help="number of jobs")
    parser.add_argument(
        "--concurrency",
        type=int,
        default=default_concurrency,
        help="worker concurrency (tasks or threads, as the framework has it)",
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="give up waiting for the jobs after this"
    )
    return parser.parse_args()


def version_of(distribution: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return "unknown (not installed as a distribution)"


def fail(message: str, **extra: Any) -> None:
    """Report a failure as a JSON line and exit non-zero."""
    sys.stdout.write(json.dumps({"error": message, **extra}) + "\n")
    sys.stdout.flush()
    raise SystemExit(1)


# --------------------------------------------------------------------------------------------
# Network-broker cases (redis, rabbitmq, kafka): one script, two roles.
#
# The script runs as the *driver* (default): it times the sequential and the concurrent enqueue
# phases in its own process, launches the *worker* role of the same script as a child process
# for the drain and for the latency phase, and prints one `NetCaseResult` JSON line. The worker
# role sets the framework's worker up on one queue, prints `READY <monotonic_ns>` when it is about
# to consume, counts jobs in the actor, and when the N-th job has run prints one JSON line (time,
# count, peak RSS, latencies) and exits at once (`os._exit`), without a graceful shutdown.
#
# Times cross the process boundary as `time.monotonic_ns()`, which is one system-wide clock on
# Linux. In latency mode each job's `int` argument is the driver's `monotonic_ns()` read right
# before its enqueue call; the actor subtracts it from its own reading when it starts. Before the
# measured jobs, one probe job (argument -1, not counted) is sent and awaited.

LATENCY_JOBS = 1_000
LATENCY_RATE = 500.0  # jobs per second
CHUNK = 500  # concurrent enqueue: calls gathered per chunk
PROBE = -1  # the job argument of the latency phase's probe (the actor does not count it)

REDIS_URL = os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/")
KAFKA_BOOTSTRAP = os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
POSTGRES_DSN = os.environ.get("REPID_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
NATS_URL = os.environ.get("REPID_NATS_SERVERS", "nats://127.0.0.1:4222")


@dataclass
class NetCaseResult:
    """What one network case reports (driver role): one JSON line on stdout.

    Seconds of each phase; `conc_enqueue_s` is None where the framework's enqueue call is
    synchronous (nothing to gather). `drain_launch_s` runs from launching the worker process,
    `drain_ready_s` from the moment it said it was ready, both to the N-th job having run.
    """

    case: str
    framework: str
    version: str
    n: int
    concurrency: str
    seq_enqueue_s: float
    conc_enqueue_s: float | None
    drain_launch_s: float
    drain_ready_s: float
    worker_startup_s: float
    latency_p50_ms: float
    latency_p99_ms: float
    latency_jobs: int
    worker_peak_rss_mb: float
    jobs_run: int
    guarantees: str
    notes: list[str] = field(default_factory=list)

    def emit(self) -> None:
        sys.stdout.write(json.dumps(asdict(self)) + "\n")
        sys.stdout.flush()


class JobCounter:
    """Counts jobs in the worker process; on the N-th one reports and exits the process.

    `hit(n)` is the whole body of every benchmark actor. It takes a lock so thread-pool workers
    (Dramatiq, Celery) count correctly; uncontended, that costs well under a microsecond.
    """

    def __init__(self, n: int, latency: bool) -> None:
        self.n = n
        self.count = 0
        self.latency = latency
        self.latencies_ns: list[int] = []
        self._lock = threading.Lock()

    def ready(self) -> None:
        """Say that the worker is about to consume (printed once, on stdout)."""
        # Straight to file descriptor 1: some workers (Celery) redirect sys.stdout to a logger.
        os.write(1, f"READY {time.monotonic_ns()}\n".encode())

    def hit(self, n: int) -> None:
        now = time.monotonic_ns()
        if n < 0:  # the latency phase's probe: not counted
            os.write(1, b"PROBE\n")
            return
        with self._lock:
            self.count += 1
            if self.latency:
                self.latencies_ns.append(now - n)
            if self.count == self.n:
                self.finish(now)

    def finish(self, now: int) -> None:
        report = {
            "done_ns": now,
            "count": self.count,
            "peak_rss_mb": peak_rss_mb(),
            "latencies_ns": self.latencies_ns,
        }
        os.write(1, ("DONE " + json.dumps(report) + "\n").encode())
        os._exit(0)


def quiet_logging() -> None:
    """Frameworks log every job at INFO in some setups; keep the worker's stderr small."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger().setLevel(logging.WARNING)


class Producer:
    """The driver's side of one framework on one queue.

    Subclasses implement `enqueue(i)` as the framework's one normal enqueue call, or set
    `sync = True` and implement `enqueue_sync(i)` when the call is synchronous (Dramatiq, Celery).
    """

    sync = False

    async def enqueue(self, i: int) -> object:
        raise NotImplementedError

    def enqueue_sync(self, i: int) -> object:
        raise NotImplementedError

    async def close(self) -> None:
        """Release connections (the queue itself is removed by `NetCase.cleanup`)."""


class NetCase:
    """One framework on one network broker. A case script subclasses it and calls `main()`."""

    case = ""
    framework = ""  # distribution name, for the version
    guarantees = ""  # what an acknowledged enqueue means (confirms, persistence, ...)
    notes: tuple[str, ...] = ()

    def concurrency_label(self, concurrency: int) -> str:
        return str(concurrency)

    async def producer(self, queue: str) -> Producer:
        raise NotImplementedError

    def run_worker(self, queue: str, counter: JobCounter, concurrency: int) -> None:
        """Worker role: consume `queue`, call `counter.ready()` once consuming is about to start
        and `counter.hit(n)` in the actor; never returns normally (the counter exits)."""
        raise NotImplementedError

    async def cleanup(self, queues: list[str]) -> None:
        """Delete every queue, key or topic the run created (the worker is gone by then)."""
        raise NotImplementedError

    # ---------------------------------------------------------------------------------------

    def main(self) -> None:
        parser = argparse.ArgumentParser(description=self.case)
        parser.add_argument("--n", type=int, default=20_000)
        parser.add_argument("--concurrency", type=int, default=100)
        parser.add_argument("--timeout", type=float, default=300.0)
        parser.add_argument("--role", choices=("driver", "worker"), default="driver")
        parser.add_argument("--queue", default="")
        parser.add_argument("--latency", action="store_true")
        parser.add_argument("--latency-jobs", type=int, default=LATENCY_JOBS)
        args = parser.parse_args()
        if args.role == "worker":
            quiet_logging()
            self.run_worker(args.queue, JobCounter(args.n, args.latency), args.concurrency)
            fail("the worker returned before the N-th job")
        import asyncio

        # Ctrl-C / SIGINT / SIGTERM raise at once (asyncio's own SIGINT handler only cancels the
        # main task, which a client library may swallow); the queues are deleted either way.
        signal.signal(signal.SIGINT, _interrupt)
        signal.signal(signal.SIGTERM, _interrupt)
        self._workers: list[subprocess.Popen[str]] = []
        self._queues: list[str] = []
        try:
            asyncio.run(self._drive(args))
        except CaseError as exc:
            fail(str(exc))
        except BaseException:
            self._kill_workers()
            if self._queues:
                asyncio.run(self.cleanup(self._queues))
            raise

    def _kill_workers(self) -> None:
        for w in self._workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    async def _drive(self, args: argparse.Namespace) -> None:
        import asyncio
        import uuid

        n: int = args.n
        run_id = f"bench{uuid.uuid4().hex[:10]}"
        slug = "".join(c for c in self.case if c.isalnum())  # valid in every broker's names
        q_seq, q_conc, q_lat = (f"{run_id}-{slug}-{x}" for x in ("seq", "conc", "lat"))
        queues = [q_seq, q_conc, q_lat]
        workers = self._workers
        self._queues = queues
        try:
            # (a) sequential enqueue
            prod = await self.producer(q_seq)
            t0 = time.perf_counter()
            if prod.sync:
                for i in range(n):
                    prod.enqueue_sync(i)
            else:
                for i in range(n):
                    await prod.enqueue(i)
            seq_s = time.perf_counter() - t0
            await prod.close()

            # (c) drain: a fresh worker process on the full queue
            launch_ns = time.monotonic_ns()
            worker = self._spawn(args, q_seq, n, latency=False)
            workers.append(worker)
            ready_ns, done = await asyncio.to_thread(_await_worker, worker, args.timeout)
            if done["count"] != n:
                raise CaseError(f"worker counted {done['count']} jobs, expected {n}")
            drain_launch_s = (done["done_ns"] - launch_ns) / 1e9
            drain_ready_s = (done["done_ns"] - ready_ns) / 1e9
            startup_s = (ready_ns - launch_ns) / 1e9

            # (b) concurrent enqueue into a second queue (removed again by the clean-up)
            conc_s: float | None = None
            prod = await self.producer(q_conc)
            if not prod.sync:
                t0 = time.perf_counter()
                for start in range(0, n, CHUNK):
                    await asyncio.gather(
                        *(prod.enqueue(i) for i in range(start, min(start + CHUNK, n)))
                    )
                conc_s = time.perf_counter() - t0
            await prod.close()

            # latency: an idle worker, then LATENCY_JOBS jobs at a steady LATENCY_RATE
            latencies = await self._latency(args, q_lat, workers)
        finally:
            self._kill_workers()
            if not _interrupted:
                await self.cleanup(queues)
                self._queues = []

        lat_ms = sorted(x / 1e6 for x in latencies)
        NetCaseResult(
            case=self.case,
            framework=self.framework,
            version=version_of(self.framework),
            n=n,
            concurrency=self.concurrency_label(args.concurrency),
            seq_enqueue_s=seq_s,
            conc_enqueue_s=conc_s,
            drain_launch_s=drain_launch_s,
            drain_ready_s=drain_ready_s,
            worker_startup_s=startup_s,
            latency_p50_ms=_percentile(lat_ms, 0.50),
            latency_p99_ms=_percentile(lat_ms, 0.99),
            latency_jobs=len(lat_ms),
            worker_peak_rss_mb=done["peak_rss_mb"],
            jobs_run=done["count"],
            guarantees=self.guarantees,
            notes=list(self.notes),
        ).emit()

    async def _latency(
        self, args: argparse.Namespace, queue: str, workers: list[subprocess.Popen[str]]
    ) -> list[int]:
        import asyncio

        jobs: int = args.latency_jobs
        worker = self._spawn(args, queue, jobs, latency=True)
        workers.append(worker)
        assert worker.stdout is not None
        await asyncio.to_thread(_await_ready, worker, args.timeout)
        prod = await self.producer(queue)
        # One probe job first, so the measured jobs find a worker that consumes already: some
        # workers say "ready" before their consumer has subscribed (a Kafka group join, say).
        if prod.sync:
            prod.enqueue_sync(PROBE)
        else:
            await prod.enqueue(PROBE)
        await asyncio.to_thread(_await_line, worker, "PROBE", args.timeout)
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[object]] = set()
        start = loop.time()
        for k in range(jobs):
            delay = start + k / LATENCY_RATE - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if prod.sync:
                prod.enqueue_sync(time.monotonic_ns())
            else:
                # Fire at the scheduled moment whether or not the previous call returned.
                task = asyncio.ensure_future(prod.enqueue(time.monotonic_ns()))
                pending.add(task)
                task.add_done_callback(pending.discard)
        if pending:
            await asyncio.gather(*pending)
        done = await asyncio.to_thread(_await_done, worker, args.timeout)
        await prod.close()
        if done["count"] != jobs:
            raise CaseError(f"latency worker counted {done['count']} jobs, expected {jobs}")
        latencies: list[int] = done["latencies_ns"]
        return latencies

    def _spawn(
        self, args: argparse.Namespace, queue: str, n: int, *, latency: bool
    ) -> subprocess.Popen[str]:
        cmd = [
            sys.executable,
            sys.argv[0],
            "--role",
            "worker",
            "--queue",
            queue,
            "--n",
            str(n),
            "--concurrency",
            str(args.concurrency),
        ]
        if latency:
            cmd.append("--latency")
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)


_interrupted = False


def _interrupt(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


class CaseError(Exception):
    """A run failed in a way worth one line in the report."""


def _await_line(worker: subprocess.Popen[str], expected: str, timeout: float) -> None:
    for line in _lines(worker, time.monotonic() + timeout):
        if line == expected:
            return
    raise CaseError(f"worker exited ({worker.poll()}) or timed out before printing {expected}")


def _await_ready(worker: subprocess.Popen[str], timeout: float) -> int:
    assert worker.stdout is not None
    deadline = time.monotonic() + timeout
    for line in _lines(worker, deadline):
        if line.startswith("READY "):
            return int(line.split()[1])
        if line.startswith("DONE "):
            raise CaseError("worker finished before saying it was ready")
    raise CaseError(f"worker exited ({worker.poll()}) or timed out before it was ready")


def _await_done(worker: subprocess.Popen[str], timeout: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    for line in _lines(worker, deadline):
        if line.startswith("DONE "):
            done: dict[str, Any] = json.loads(line[5:])
            worker.wait(timeout=30)
            return done
    raise CaseError(f"worker exited ({worker.poll()}) or timed out before the N-th job")


def _await_worker(worker: subprocess.Popen[str], timeout: float) -> tuple[int, dict[str, Any]]:
    ready = _await_ready(worker, timeout)
    return ready, _await_done(worker, timeout)


def _lines(worker: subprocess.Popen[str], deadline: float) -> Iterator[str]:
    """Lines of the worker's stdout until it closes; kill the worker past the deadline."""
    assert worker.stdout is not None
    timer = threading.Timer(max(0.0, deadline - time.monotonic()), worker.kill)
    timer.daemon = True
    timer.start()
    try:
        for line in worker.stdout:
            yield line.strip()
    finally:
        timer.cancel()


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(0, min(len(sorted_values) - 1, math.ceil(q * len(sorted_values)) - 1))
    return sorted_values[rank]


# --------------------------------------------------------------------------------------------
# Clean-up helpers that need no client library (a peer's virtualenv may not have redis-py).


def redis_delete_matching(
    patterns: list[str], keys: list[str] | None = None, url: str = REDIS_URL
) -> int:
    """Delete every key matching any of `patterns`, and `keys` (SCAN + UNLINK over a socket)."""
    from urllib.parse import urlparse

    parsed = urlparse(url)
    db = int((parsed.path or "/0").lstrip("/") or 0)
    with socket.create_connection((parsed.hostname or "127.0.0.1", parsed.port or 6379), 10) as s:
        reader = s.makefile("rb")

        def call(*parts: str) -> Any:
            out = [f"*{len(parts)}\r\n".encode()]
            for part in parts:
                raw = part.encode()
                out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
            s.sendall(b"".join(out))
            return _resp_read(reader)

        if parsed.password:
            call("AUTH", parsed.password)
        call("SELECT", str(db))
        deleted = 0
        explicit = keys or []
        for start in range(0, len(explicit), 1000):
            deleted += int(call("UNLINK", *explicit[start : start + 1000]))
        for pattern in patterns:
            cursor = "0"
            while True:
                cursor_raw, found = call("SCAN", cursor, "MATCH", pattern, "COUNT", "1000")
                cursor = cursor_raw.decode()
                if found:
                    deleted += int(call("UNLINK", *(k.decode() for k in found)))
                if cursor == "0":
                    break
        return deleted


def _resp_read(reader: Any) -> Any:
    line: bytes = reader.readline()
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest
    if kind == b"-":
        raise CaseError(f"redis: {rest.decode()}")
    if kind == b":":
        return int(rest)
    if kind == b"$":
        length = int(rest)
        if length < 0:
            return None
        data: bytes = reader.read(length + 2)[:-2]
        return data
    if kind == b"*":
        count = int(rest)
        return None if count < 0 else [_resp_read(reader) for _ in range(count)]
    raise CaseError(f"redis: unexpected reply {line!r}")


async def kafka_delete_topics(topics: list[str], bootstrap: str = KAFKA_BOOTSTRAP) -> None:
    """Delete the run's topics (aiokafka is in every Kafka case's environment)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if doomed:
            await admin.delete_topics(doomed)
    finally:
        await admin.close()


async def nats_delete_streams(prefixes: Sequence[str], url: str = NATS_URL) -> None:
    """Delete the streams whose names start with one of `prefixes` (nats-py is in every NATS
    case's environment)."""
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            name = info.config.name or ""
            if name.startswith(tuple(prefixes)):
                await js.delete_stream(name)
    finally:
        await nc.close()


async def rabbitmq_delete(queues: Sequence[str], exchanges: Sequence[str] = ()) -> None:
    """Delete the run's queues and exchanges (aio-pika is in every RabbitMQ peer's
    environment)."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in queues:
            await channel.queue_delete(name)
        for name in exchanges:
            await channel.exchange_delete(name)


def sqlite_file(run_id: str, case: str) -> str:
    """The SQLite file of one run of one case (shared by the driver and its workers)."""
    import tempfile

    return os.path.join(tempfile.gettempdir(), f"{run_id}-{case}.db")


def sqlite_remove(path: str) -> None:
    """Delete a SQLite file and its WAL / shared-memory / journal files."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(path + suffix)
