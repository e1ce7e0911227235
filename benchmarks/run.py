"""End-to-end throughput benchmarks: repid against peer job-queue frameworks.

    python benchmarks/run.py {inmemory,redis,rabbitmq,kafka,nats,postgres,sqlite} [--n N]
                             [--rounds R] [--json PATH] [--cases a,b] [--timeout S]

Each case is a standalone script under `benchmarks/cases/` that runs one framework once and
prints one JSON line (`cases/_common.py: CaseResult`, or `NetCaseResult` for the network suites,
whose cases launch their own worker processes). This orchestrator:

* creates a virtualenv per peer under `benchmarks/.venvs/<peer>` with pinned versions (once;
  it is rebuilt when the pins or the Python version change),
* runs every case in its own fresh interpreter, rounds interleaved
  (repid, peer1, peer2, repid, peer1, ...), so neither peak RSS nor warm-up leaks between cases,
* reports the median of each figure over the rounds and repid's ratio to the best peer,
* records a failed run and goes on; stops a run past its deadline (interrupt, then kill its
  process group); checks the suite's server first, or starts a private noida-db for Kafka.

The repid case runs with this interpreter (`sys.executable`), with the project root put on
PYTHONPATH so an editable install is not strictly required. See `benchmarks/README.md`.
"""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_ROOT = BENCH_DIR.parent
CASES_DIR = BENCH_DIR / "cases"
VENVS_DIR = BENCH_DIR / ".venvs"

SUBJECT = "repid"

#: Seconds a case may run past its own `--timeout` before the orchestrator stops it, and seconds
#: it then has to clean up after SIGINT before its process group is killed.
KILL_GRACE = 60.0
STOP_GRACE = 30.0

#: Pinned requirements of each peer's virtualenv. Bump deliberately, and say so in the README.
PEER_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "taskiq": ("taskiq==0.13.0",),
    "dramatiq": ("dramatiq[redis,rabbitmq]==2.2.1",),
    "arq": ("arq==0.28.0",),
    # saq 0.26.4 imports typing_extensions without declaring it.
    "saq": ("saq[redis]==0.26.4", "typing-extensions==4.16.0"),
    "taskiq-redis": ("taskiq-redis==1.2.4", "taskiq==0.13.0"),
    "streaq": ("streaq==7.2.0",),
    "celery": ("celery[redis]==5.7.0",),
    "faststream": ("faststream[redis,rabbit,kafka]==0.7.8",),
    # repid 2.1.4 imports typing_extensions without declaring it.
    "repid-2": ("repid[redis]==2.1.4", "typing-extensions==4.16.0"),
    "taskiq-aio-pika": ("taskiq-aio-pika==0.6.1", "taskiq==0.13.0"),
    "aiokafka": ("aiokafka==0.14.0",),
    "aio-pika": ("aio-pika==10.2.1",),
    "huey": ("huey==3.5.4",),
    "persist-queue": ("persist-queue==1.1.0",),
    "faststream-nats": ("faststream[nats]==0.7.8",),
    "nats-py": ("nats-py==2.16.0",),
    "taskiq-nats": ("taskiq-nats==0.7.0", "taskiq==0.13.0"),
    "procrastinate": ("procrastinate==3.10.0", "psycopg[binary,pool]==3.3.9"),
    "pgqueuer": ("pgqueuer==1.6.0", "asyncpg==0.32.0"),
    "saq-postgres": (
        "saq[postgres]==0.26.4",
        "typing-extensions==4.16.0",
        "psycopg[binary,pool]==3.3.9",
    ),
}


@dataclass(frozen=True)
class Case:
    """One framework in one suite.

    `venv` is the key of `PEER_REQUIREMENTS` whose virtualenv runs the script, or `None` for this
    interpreter (the repid case). `concurrency` is passed as `--concurrency` (tasks or threads, as
    the framework has it; 0 where it does not apply). A `variant` is repid in another
    configuration: reported, but neither the subject of the ratios nor a peer. A `reference` is
    a plain client loop with no framework: not a peer either, repid's ratios to it get their own
    row.
    """

    name: str
    script: str
    venv: str | None
    concurrency: int
    variant: bool = False
    reference: bool = False
    group: str = ""
    """Cases of a group (e.g. "quorum": every case on quorum queues) are compared among
    themselves: `repid-<group>` against the group's peers, and against repid's main case."""


@dataclass(frozen=True)
class Suite:
    """A set of cases on one broker.

    `network` suites use the two-process method of `cases/_common.NetCase` (sequential and
    concurrent enqueue, drain by a worker process, latency, worker RSS); `server` names the
    server the suite needs ("redis", "rabbitmq", "kafka"), checked (or started) before the rounds.
    """

    name: str
    description: str
    default_n: int
    cases: tuple[Case, ...]
    network: bool = False
    server: str | None = None


SUITES: dict[str, Suite] = {
    "inmemory": Suite(
        name="inmemory",
        description="in-process brokers, no server",
        default_n=100_000,
        cases=(
            Case("repid", "repid_inmemory.py", venv=None, concurrency=1000),
            Case("taskiq", "taskiq_inmemory.py", venv="taskiq", concurrency=0),
            Case("dramatiq", "dramatiq_stub.py", venv="dramatiq", concurrency=100),
        ),
    ),
    "redis": Suite(
        name="redis",
        description="Redis 127.0.0.1:6379 (REPID_REDIS_DSN)",
        default_n=20_000,
        network=True,
        server="redis",
        cases=(
            Case("repid", "repid_redis.py", venv=None, concurrency=100),
            Case("repid-2", "repid2_redis.py", venv="repid-2", concurrency=100),
            Case("arq", "arq_redis.py", venv="arq", concurrency=100),
            Case("saq", "saq_redis.py", venv="saq", concurrency=100),
            Case("taskiq-redis", "taskiq_redis_stream.py", venv="taskiq-redis", concurrency=100),
            Case("streaq", "streaq_redis.py", venv="streaq", concurrency=100),
            Case("dramatiq", "dramatiq_redis.py", venv="dramatiq", concurrency=100),
            Case("celery", "celery_redis.py", venv="celery", concurrency=100),
            Case("faststream", "faststream_redis.py", venv="faststream", concurrency=100),
        ),
    ),
    "rabbitmq": Suite(
        name="rabbitmq",
        description="RabbitMQ 127.0.0.1:5672, guest/guest (REPID_RABBITMQ_DSN)",
        default_n=20_000,
        network=True,
        server="rabbitmq",
        cases=(
            Case("repid", "repid_rabbitmq.py", venv=None, concurrency=100),
            Case("repid-fast", "repid_rabbitmq_fast.py", venv=None, concurrency=100, variant=True),
            Case("faststream", "faststream_rabbitmq.py", venv="faststream", concurrency=100),
            Case("taskiq-aio-pika", "taskiq_rabbitmq.py", venv="taskiq-aio-pika", concurrency=100),
            Case("dramatiq", "dramatiq_rabbitmq.py", venv="dramatiq", concurrency=100),
            Case("celery", "celery_rabbitmq.py", venv="celery", concurrency=100),
            Case(
                "aio-pika-raw", "aiopika_raw.py", venv="aio-pika", concurrency=100, reference=True
            ),
            Case(
                "repid-quorum",
                "repid_rabbitmq_quorum.py",
                venv=None,
                concurrency=100,
                group="quorum",
            ),
            Case(
                "faststream-quorum",
                "faststream_rabbitmq_quorum.py",
                venv="faststream",
                concurrency=100,
                group="quorum",
            ),
            Case(
                "taskiq-aio-pika-quorum",
                "taskiq_rabbitmq_quorum.py",
                venv="taskiq-aio-pika",
                concurrency=100,
                group="quorum",
            ),
        ),
    ),
    "kafka": Suite(
        name="kafka",
        description="Kafka protocol: a private noida-db, or REPID_KAFKA_BOOTSTRAP",
        default_n=20_000,
        network=True,
        server="kafka",
        cases=(
            Case("repid", "repid_kafka.py", venv=None, concurrency=100),
            Case("faststream", "faststream_kafka.py", venv="faststream", concurrency=100),
            Case("aiokafka-raw", "aiokafka_raw.py", venv="aiokafka", concurrency=100),
        ),
    ),
    "sqlite": Suite(
        name="sqlite",
        description="one SQLite file per run in the temporary directory, no server",
        default_n=20_000,
        network=True,
        cases=(
            Case("repid", "repid_sqlite.py", venv=None, concurrency=100),
            Case("repid-full", "repid_sqlite_full.py", venv=None, concurrency=100, variant=True),
            Case("huey", "huey_sqlite.py", venv="huey", concurrency=100),
            Case("persist-queue", "persistqueue_sqlite.py", venv="persist-queue", concurrency=100),
        ),
    ),
    "postgres": Suite(
        name="postgres",
        description="PostgreSQL 127.0.0.1:5432, database test (REPID_POSTGRES_DSN)",
        default_n=20_000,
        network=True,
        server="postgres",
        cases=(
            Case("repid", "repid_postgres.py", venv=None, concurrency=100),
            Case(
                "procrastinate", "procrastinate_postgres.py", venv="procrastinate", concurrency=100
            ),
            Case("pgqueuer", "pgqueuer_postgres.py", venv="pgqueuer", concurrency=100),
            Case("saq", "saq_postgres.py", venv="saq-postgres", concurrency=100),
            Case("pgbench", "pgbench_postgres.py", venv=None, concurrency=100, reference=True),
        ),
    ),
    "nats": Suite(
        name="nats",
        description="NATS JetStream 127.0.0.1:4222 (REPID_NATS_SERVERS)",
        default_n=20_000,
        network=True,
        server="nats",
        cases=(
            Case("repid", "repid_nats.py", venv=None, concurrency=100),
            Case("faststream", "faststream_nats.py", venv="faststream-nats", concurrency=100),
            Case("taskiq-nats", "taskiq_nats_jetstream.py", venv="taskiq-nats", concurrency=100),
            Case("nats-py-raw", "nats_raw.py", venv="nats-py", concurrency=100, reference=True),
        ),
    ),
}

#: Network-suite figures: (key, column title, higher is better).
NET_FIGURES: tuple[tuple[str, str, bool], ...] = (
    ("seq_enqueue", "seq. enqueue /s", True),
    ("conc_enqueue", "conc. enqueue /s", True),
    ("drain_launch", "drain /s (from launch)", True),
    ("drain_ready", "drain /s (from ready)", True),
    ("end_to_end", "end-to-end /s", True),
    ("latency_p50_ms", "latency p50 ms", False),
    ("latency_p99_ms", "latency p99 ms", False),
    ("worker_peak_rss_mb", "worker peak RSS MB", False),
)

# Figures reported per case: (key, column title, higher is better).
RATE_FIGURES: tuple[tuple[str, str], ...] = (
    ("enqueue", "enqueue jobs/s"),
    ("drain", "drain jobs/s"),
    ("end_to_end", "end-to-end jobs/s"),
)


@dataclass
class CaseRuns:
    case: Case
    results: list[dict[str, Any]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# virtualenvs


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_venv(name: str, requirements: Sequence[str]) -> Path:
    """Create (or reuse) `.venvs/<name>` with exactly the pinned requirements; return its python."""
    venv = VENVS_DIR / name
    stamp_path = venv / ".bench-stamp.json"
    wanted = {"python": platform.python_version(), "requirements": list(requirements)}
    python = venv_python(venv)
    if python.exists() and stamp_path.exists():
        try:
            if json.loads(stamp_path.read_text()) == wanted:
                return python
        except json.JSONDecodeError:
            pass

    _log(f"[setup] creating {venv.relative_to(PROJECT_ROOT)} with {' '.join(requirements)}")
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "--disable-pip-version-check", "-q"]
    proc = subprocess.run(
        [*pip, "install", *requirements],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
    )
    if proc.returncode != 0:
        _log(proc.stdout + proc.stderr)
        raise SystemExit(f"could not install {' '.join(requirements)} into {venv}")
    stamp_path.write_text(json.dumps(wanted))
    return python


def venv_freeze(python: Path) -> list[str]:
    out = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "freeze"],
        capture_output=True,
        text=True,
        check=False,
        env=_clean_env(),
    )
    return out.stdout.split()


# --------------------------------------------------------------------------------------------
# running cases


def compile_subject() -> None:
    """Byte-compile repid and the case scripts, as `pip install` does for every peer.

    The peers' virtualenvs hold `.pyc` files written by pip at install time; the repid case runs
    from the source tree, where nothing may have written them (an editable install compiles
    nothing, and `PYTHONDONTWRITEBYTECODE=1` stops the interpreter from caching them). Without
    this, every repid worker process would compile its modules from source at start-up (about
    70 ms on the reference machine), a cost no installed package pays. Stale files are harmless:
    the interpreter checks each one against its source's modification time.
    """
    for folder in (PROJECT_ROOT / "repid", CASES_DIR):
        if not compileall.compile_dir(folder, quiet=1):
            _log(f"[setup] could not byte-compile everything under {folder}")


def _clean_env() -> dict[str, str]:
    """Environment for peers: no PYTHONPATH / virtualenv leaking in from the caller."""
    env = dict(os.environ)
    for var in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"):
        env.pop(var, None)
    return env


def _subject_env() -> dict[str, str]:
    env = _clean_env()
    existing = os.environ.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), existing) if p)
    return env


def run_case(
    case: Case,
    python: Path,
    n: int,
    timeout: float,
    extra_env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run one case once in a fresh interpreter; return its JSON result or raise RuntimeError.

    `timeout` bounds the case's own waits; `KILL_GRACE` seconds after that the orchestrator
    interrupts the case (it deletes its queues) and then kills its process group.
    """
    cmd = [
        str(python),
        str(CASES_DIR / case.script),
        "--n",
        str(n),
        "--concurrency",
        str(case.concurrency),
        "--timeout",
        str(timeout),
    ]
    env = _subject_env() if case.venv is None else _clean_env()
    env.update(extra_env or {})
    # A session of its own, so a timeout kills the case and the worker processes it launched.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=PROJECT_ROOT,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout + KILL_GRACE)
    except subprocess.TimeoutExpired as exc:
        _stop_case(proc)
        raise RuntimeError(f"timed out after {exc.timeout:.0f}s") from exc
    except BaseException:  # Ctrl-C, SIGTERM: let the case clean up, then stop it
        _stop_case(proc)
        raise
    finally:
        _kill_group(proc)
    proc_stdout, proc_stderr = stdout, stderr

    lines = [line for line in proc_stdout.splitlines() if line.strip()]
    result: dict[str, Any] | None = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if proc.returncode != 0 or result is None or "error" in result:
        log = _save_failure_log(case, proc_stdout, proc_stderr)
        detail = (result or {}).get("error") or _last_error(proc_stderr) or _tail(proc_stdout)
        detail = f"{detail} (full output: {log})"
        raise RuntimeError(f"exit {proc.returncode}: {detail}")
    if result["jobs_run"] != n:
        raise RuntimeError(f"ran {result['jobs_run']} jobs, expected {n}")
    return result


def _stop_case(proc: subprocess.Popen[str]) -> None:
    """Interrupt a running case (SIGINT: it kills its workers and deletes its queues), then
    kill its process group if it has not exited within `STOP_GRACE` seconds."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=STOP_GRACE)
    _kill_group(proc)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    """Kill the case's process group (the case and any worker it left behind)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _save_failure_log(case: Case, stdout: str, stderr: str) -> Path:
    """Keep a failed run's whole output; the table only has room for one line."""
    logs = Path(tempfile.gettempdir()) / "repid-bench-logs"
    logs.mkdir(exist_ok=True)
    slug = "".join(c if c.isalnum() else "-" for c in case.name)
    path = logs / f"{time.strftime('%Y%m%dT%H%M%S')}-{slug}-{os.getpid()}.log"
    path.write_text(f"--- stdout\n{stdout}\n--- stderr\n{stderr}\n")
    return path


def _last_error(stderr: str) -> str:
    """The last exception line of the last traceback (not 'Exception ignored in' noise)."""
    lines = stderr.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        ignored = i > 0 and lines[i - 1].startswith("Exception ignored")
        if lines[i].startswith("Traceback (most recent call last)") and not ignored:
            for line in lines[i + 1 :]:
                if line and not line.startswith(" "):
                    return line
    return _tail(stderr)


def _tail(text: str, lines: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-lines:])


# --------------------------------------------------------------------------------------------
# statistics and reporting


def rates(result: dict[str, Any]) -> dict[str, float | None]:
    """jobs/s per phase; a phase that does not apply (seconds is None) has no rate."""
    n = result["n"]

    def rate(seconds: float | None) -> float | None:
        return None if seconds is None or seconds <= 0 else n / seconds

    return {
        "enqueue": rate(result["enqueue_s"]),
        "drain": rate(result["drain_s"]),
        # N / (enqueue + drain); equals N / total_s when both phases exist.
        "end_to_end": rate(result["total_s"]),
    }


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def summarize(runs: CaseRuns) -> dict[str, Any]:
    per_round = [rates(r) for r in runs.results]
    summary: dict[str, Any] = {
        "case": runs.case.name,
        "rounds_ok": len(runs.results),
        "failures": runs.failures,
    }
    if not runs.results:
        return summary
    first = runs.results[0]
    summary |= {
        "framework": first["framework"],
        "version": first["version"],
        "concurrency": first["concurrency"],
        "notes": first["notes"],
    }
    for key, _ in RATE_FIGURES:
        values = [r[key] for r in per_round]
        summary[f"{key}_jobs_per_s"] = _median(values)
        present = [v for v in values if v is not None]
        summary[f"{key}_jobs_per_s_all"] = values
        summary[f"{key}_spread"] = (
            (max(present) - min(present)) / statistics.median(present) if present else None
        )
    for key in ("peak_rss_mb", "rss_after_setup_mb"):
        summary[key] = _median([r[key] for r in runs.results])
        summary[f"{key}_all"] = [r[key] for r in runs.results]
    return summary


def ratios(summaries: Sequence[dict[str, Any]]) -> dict[str, float | None]:
    """repid / best peer per figure: higher is better for rates; for RSS, best is the lowest
    peer and a ratio below 1 means repid used less memory."""
    subject = next((s for s in summaries if s["case"] == SUBJECT), None)
    peers = [s for s in summaries if s["case"] != SUBJECT]
    out: dict[str, float | None] = {}
    for key, _ in RATE_FIGURES:
        col = f"{key}_jobs_per_s"
        best = max((p[col] for p in peers if p.get(col) is not None), default=None)
        mine = subject.get(col) if subject else None
        out[col] = mine / best if mine is not None and best else None
    best_rss = min((p["peak_rss_mb"] for p in peers if p.get("peak_rss_mb")), default=None)
    mine_rss = subject.get("peak_rss_mb") if subject else None
    out["peak_rss_mb"] = mine_rss / best_rss if mine_rss is not None and best_rss else None
    return out


def _fmt_rate(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def _fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def render_markdown(suite: Suite, n: int, rounds: int, summaries: Sequence[dict[str, Any]]) -> str:
    headers = [
        "case",
        "version",
        "concurrency",
        *(title for _, title in RATE_FIGURES),
        "e2e spread",
        "peak RSS MB",
    ]
    lines = [
        f"## {suite.name}: {suite.description}",
        "",
        f"N = {n:,} jobs per run, median of {rounds} interleaved rounds, each case in a fresh "
        f"interpreter. Python {platform.python_version()}, {platform.machine()}, "
        f"{os.cpu_count()} CPUs.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + "|",
    ]
    for s in summaries:
        if not s["rounds_ok"]:
            cells = [s["case"], "failed", *[""] * (len(headers) - 2)]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        spread = s["end_to_end_spread"]
        rounds_note = "" if s["rounds_ok"] == rounds else f" ({s['rounds_ok']}/{rounds} rounds ok)"
        cells = [
            s["case"] + rounds_note,
            s["version"],
            s["concurrency"],
            *(_fmt_rate(s[f"{key}_jobs_per_s"]) for key, _ in RATE_FIGURES),
            "n/a" if spread is None else f"{spread:.0%}",
            f"{s['peak_rss_mb']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    r = ratios(summaries)
    lines.append(
        "| **repid / best peer** | | | "
        + " | ".join(_fmt_ratio(r[f"{key}_jobs_per_s"]) for key, _ in RATE_FIGURES)
        + f" | | {_fmt_ratio(r['peak_rss_mb'])} |"
    )
    lines += [
        "",
        "- enqueue = N / time of N sequential enqueue calls with no worker running; "
        "drain = N / time from starting one worker on the full queue until the N-th job ran; "
        "end-to-end = N / (enqueue + drain).",
        "- Ratios: rates are repid / the fastest peer (above 1 = repid faster); peak RSS is "
        "repid / the smallest peer (below 1 = repid leaner). e2e spread = (max - min) / median.",
        "- Peak RSS = ru_maxrss of the case's own process, imports included.",
    ]
    for s in summaries:
        lines += [f"- {s['case']}: {note}" for note in s.get("notes", [])]
        lines += [f"- {s['case']} FAILED: {failure}" for failure in s["failures"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# network suites: figures, statistics, table


def net_figures(result: dict[str, Any]) -> dict[str, float | None]:
    """Every network-suite figure of one run (rates in jobs/s)."""
    n = result["n"]

    def rate(seconds: float | None) -> float | None:
        return None if seconds is None or seconds <= 0 else n / seconds

    return {
        "seq_enqueue": rate(result["seq_enqueue_s"]),
        "conc_enqueue": rate(result["conc_enqueue_s"]),
        "drain_launch": rate(result["drain_launch_s"]),
        "drain_ready": rate(result["drain_ready_s"]),
        "end_to_end": rate(result["seq_enqueue_s"] + result["drain_launch_s"]),
        "latency_p50_ms": result["latency_p50_ms"],
        "latency_p99_ms": result["latency_p99_ms"],
        "worker_peak_rss_mb": result["worker_peak_rss_mb"],
    }


def summarize_net(runs: CaseRuns) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "case": runs.case.name,
        "variant": runs.case.variant,
        "reference": runs.case.reference,
        "group": runs.case.group,
        "rounds_ok": len(runs.results),
        "failures": runs.failures,
    }
    if not runs.results:
        return summary
    first = runs.results[0]
    summary |= {
        "framework": first["framework"],
        "version": first["version"],
        "concurrency": first["concurrency"],
        "guarantees": first["guarantees"],
        "notes": first["notes"],
    }
    per_round = [net_figures(r) for r in runs.results]
    for key, _, _ in NET_FIGURES:
        values = [f[key] for f in per_round]
        summary[key] = _median(values)
        summary[f"{key}_all"] = values
    e2e = [v for v in summary["end_to_end_all"] if v is not None]
    summary["end_to_end_spread"] = (
        (max(e2e) - min(e2e)) / statistics.median(e2e) if len(e2e) > 1 else None
    )
    return summary


def _net_subject(summaries: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """repid's summary, if it has a round that succeeded."""
    return next((s for s in summaries if s["case"] == SUBJECT and s["rounds_ok"]), None)


def ratios_net(summaries: Sequence[dict[str, Any]], group: str = "") -> dict[str, dict[str, Any]]:
    """repid's figure / the best peer's, per figure, and which peer was best.

    For rates the best peer is the fastest (a ratio above 1 = repid faster); for latency and
    RSS it is the lowest (a ratio below 1 = repid lower, i.e. better). With `group`, the
    subject is `repid-<group>` and the peers are the other cases of that group.
    """
    name = f"{SUBJECT}-{group}" if group else SUBJECT
    subject = next((s for s in summaries if s["case"] == name and s["rounds_ok"]), None)
    peers = [
        s
        for s in summaries
        if s["case"] != name
        and s.get("group", "") == group
        and not s.get("variant")
        and not s.get("reference")
        and s["rounds_ok"]
    ]
    out: dict[str, dict[str, Any]] = {}
    for key, _, higher_better in NET_FIGURES:
        candidates = [p for p in peers if p.get(key) is not None]
        best = (max if higher_better else min)(
            candidates, key=lambda p: float(p[key]), default=None
        )
        mine = subject.get(key) if subject else None
        out[key] = {
            "best_peer": best["case"] if best else None,
            "best_peer_value": best[key] if best else None,
            "ratio": mine / best[key] if mine is not None and best and best[key] else None,
        }
    return out


def _fmt_value(key: str, value: float | None) -> str:
    if value is None:
        return "n/a"
    if key.endswith("_ms"):
        return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"
    if key.endswith("_mb"):
        return f"{value:.1f}"
    return f"{value:,.0f}"


def render_markdown_net(
    suite: Suite, n: int, rounds: int, summaries: Sequence[dict[str, Any]]
) -> str:
    headers = ["case", "version", "concurrency", *(t for _, t, _ in NET_FIGURES), "e2e spread"]
    lines = [
        f"## {suite.name}: {suite.description}",
        "",
        f"N = {n:,} jobs per run, median of {rounds} interleaved rounds, each case in a fresh "
        f"interpreter, its worker in a fresh process. Python {platform.python_version()}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs.",
        "",
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] * 3 + ["---:"] * (len(headers) - 3)) + "|",
    ]
    for s in summaries:
        if not s["rounds_ok"]:
            cells = [s["case"], "failed", *[""] * (len(headers) - 2)]
            lines.append("| " + " | ".join(cells) + " |")
            continue
        spread = s["end_to_end_spread"]
        rounds_note = "" if s["rounds_ok"] == rounds else f" ({s['rounds_ok']}/{rounds} rounds ok)"
        cells = [
            s["case"] + rounds_note,
            s["version"],
            s["concurrency"],
            *(_fmt_value(key, s[key]) for key, _, _ in NET_FIGURES),
            "n/a" if spread is None else f"{spread:.0%}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    r = ratios_net(summaries)
    lines.append(
        "| **repid / best peer** | | | "
        + " | ".join(_fmt_ratio(r[key]["ratio"]) for key, _, _ in NET_FIGURES)
        + " | |"
    )
    lines.append(
        "| best peer | | | "
        + " | ".join(r[key]["best_peer"] or "n/a" for key, _, _ in NET_FIGURES)
        + " | |"
    )
    subject = _net_subject(summaries)
    for group in sorted({s.get("group", "") for s in summaries} - {""}):
        g = ratios_net(summaries, group)
        lines.append(
            f"| **repid-{group} / best {group} peer** | | | "
            + " | ".join(_fmt_ratio(g[key]["ratio"]) for key, _, _ in NET_FIGURES)
            + " | |"
        )
        lines.append(
            f"| best {group} peer | | | "
            + " | ".join(g[key]["best_peer"] or "n/a" for key, _, _ in NET_FIGURES)
            + " | |"
        )
        mine = next(
            (s for s in summaries if s["case"] == f"{SUBJECT}-{group}" and s["rounds_ok"]), None
        )
        if mine is not None and subject is not None:
            cells = [
                _fmt_ratio(mine[key] / subject[key] if mine.get(key) and subject.get(key) else None)
                for key, _, _ in NET_FIGURES
            ]
            lines.append(f"| **repid-{group} / repid** | | | " + " | ".join(cells) + " | |")
    for ref in summaries:
        if ref.get("reference") and ref["rounds_ok"] and subject is not None:
            cells = [
                _fmt_ratio(subject[key] / ref[key] if subject.get(key) and ref.get(key) else None)
                for key, _, _ in NET_FIGURES
            ]
            lines.append(
                f"| **repid / {ref['case']}** (reference) | | | " + " | ".join(cells) + " | |"
            )
    lines += [
        "",
        "- seq. enqueue: N awaited enqueue calls one after the other; conc. enqueue: the same "
        "calls gathered 500 at a time (n/a: the framework's enqueue call is synchronous); drain: "
        "one fresh worker process on the full queue, from process launch and from its 'ready' "
        "point, to the N-th job having run; end-to-end = N / (seq. enqueue + drain from launch).",
        "- latency: enqueue-to-start of 1,000 jobs enqueued at a steady 500/s into an idle "
        "worker (p50, p99). Worker peak RSS: ru_maxrss of the drain worker process.",
        "- Ratios: repid / the best peer (fastest for rates, lowest for latency and RSS); above 1 "
        "is better for rates, below 1 is better for latency and RSS. e2e spread = (max - min) / "
        "median over the rounds. Variants of repid (another configuration) and references (a "
        "plain client loop, no framework) are not peers.",
        "",
        "What an acknowledged enqueue means per case:",
        "",
    ]
    for s in summaries:
        if s.get("guarantees"):
            lines.append(f"- {s['case']}: {s['guarantees']}")
    lines.append("")
    for s in summaries:
        lines += [f"- {s['case']}: {note}" for note in s.get("notes", [])]
        lines += [f"- {s['case']} FAILED: {failure}" for failure in s["failures"]]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# servers


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class KafkaServer:
    """A private noida-db (Kafka protocol) on a free port, unless REPID_KAFKA_BOOTSTRAP is set."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.data_dir: str | None = None
        self.bootstrap = os.environ.get("REPID_KAFKA_BOOTSTRAP", "")

    def __enter__(self) -> str:
        if self.bootstrap:
            return self.bootstrap
        import noida_db  # type: ignore[import-untyped]  # the dev extra

        binary = Path(noida_db.__file__).parent / "noida-db"
        port = _free_port()
        self.data_dir = tempfile.mkdtemp(prefix="repid-bench-kafka-")
        log = Path(self.data_dir) / "noida.log"
        _log(f"[setup] starting noida-db (Kafka) on 127.0.0.1:{port}, data in {self.data_dir}")
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    *("start", "--only", "kafka", "--kafka-port", str(port)),
                    *("--data-dir", str(Path(self.data_dir) / "data")),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + 60
        while not _port_open("127.0.0.1", port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise SystemExit(f"noida-db did not start; log: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        self.bootstrap = f"127.0.0.1:{port}"
        return self.bootstrap

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None


def check_server(server: str) -> None:
    """Exit with a clear message if the suite's server is not reachable."""
    from urllib.parse import urlparse

    url = {
        "redis": os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0"),
        "rabbitmq": os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/"),
        "postgres": os.environ.get(
            "REPID_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test"
        ),
        "nats": os.environ.get("REPID_NATS_SERVERS", "nats://127.0.0.1:4222").split(",")[0],
    }[server]
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 0
    if not _port_open(host, port):
        raise SystemExit(f"{server} is not reachable at {host}:{port} (scripts/services.sh)")


# --------------------------------------------------------------------------------------------
# CLI


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("suite", choices=sorted(SUITES), help="which set of cases to run")
    parser.add_argument("--n", type=int, default=None, help="jobs per run (suite default)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="write results")
    parser.add_argument(
        "--cases", default=None, help="comma-separated subset of case names (default: all)"
    )
    parser.add_argument(
        "--timeout", type=float, default=300.0, help="seconds one run may take (default 300)"
    )
    return parser.parse_args(argv)


def _run_one(
    case: Case,
    round_no: int,
    args: argparse.Namespace,
    n: int,
    suite: Suite,
    pythons: dict[str, Path],
    runs: dict[str, CaseRuns],
    extra_env: dict[str, str],
) -> None:
    """Run one case once; a failure is recorded and the rounds go on."""
    python = Path(sys.executable) if case.venv is None else pythons[case.venv]
    started = time.perf_counter()
    tag = f"[round {round_no}/{args.rounds}] {case.name}"
    try:
        result = run_case(case, python, n, args.timeout, extra_env)
    except RuntimeError as exc:
        runs[case.name].failures.append(f"round {round_no}: {exc}")
        _log(f"{tag}: FAILED {exc}")
        return
    runs[case.name].results.append(result)
    wall = time.perf_counter() - started
    if suite.network:
        f = net_figures(result)
        _log(
            f"{tag}: jobs/s seq {_fmt_rate(f['seq_enqueue'])}, conc {_fmt_rate(f['conc_enqueue'])},"
            f" drain {_fmt_rate(f['drain_launch'])}, e2e {_fmt_rate(f['end_to_end'])},"
            f" p50 {f['latency_p50_ms']:.1f} ms, RSS {f['worker_peak_rss_mb']:.1f} MB"
            f" ({wall:.1f}s wall)"
        )
    else:
        e2e = rates(result)["end_to_end"]
        _log(
            f"{tag}: {_fmt_rate(e2e)} jobs/s end-to-end,"
            f" peak RSS {result['peak_rss_mb']:.1f} MB ({wall:.1f}s wall)"
        )


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suite = SUITES[args.suite]
    # SIGTERM unwinds like Ctrl-C, so the running case is interrupted and cleans up.
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        return _main(args, suite)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(args: argparse.Namespace, suite: Suite) -> int:
    n: int = args.n or suite.default_n
    cases = list(suite.cases)
    if args.cases:
        wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
        unknown = wanted - {c.name for c in cases}
        if unknown:
            _log(f"unknown case(s): {', '.join(sorted(unknown))}")
            return 2
        cases = [c for c in cases if c.name in wanted]

    pythons: dict[str, Path] = {}
    environments: dict[str, list[str]] = {}
    for venv_name in sorted({c.venv for c in cases if c.venv is not None}):
        pythons[venv_name] = ensure_venv(venv_name, PEER_REQUIREMENTS[venv_name])
        environments[venv_name] = venv_freeze(pythons[venv_name])

    compile_subject()
    runs = {c.name: CaseRuns(c) for c in cases}
    extra_env: dict[str, str] = {}
    kafka = KafkaServer()
    if suite.server == "kafka":
        extra_env["REPID_KAFKA_BOOTSTRAP"] = kafka.__enter__()
    elif suite.server is not None:
        check_server(suite.server)
    try:
        for round_no in range(1, args.rounds + 1):
            for case in cases:
                _run_one(case, round_no, args, n, suite, pythons, runs, extra_env)
    finally:
        kafka.__exit__()

    if suite.network:
        summaries = [summarize_net(runs[c.name]) for c in cases]
        print(render_markdown_net(suite, n, args.rounds, summaries))
        ratio_report: dict[str, Any] = ratios_net(summaries)
        for group in sorted({c.group for c in cases} - {""}):
            ratio_report[f"group:{group}"] = ratios_net(summaries, group)
    else:
        summaries = [summarize(runs[c.name]) for c in cases]
        print(render_markdown(suite, n, args.rounds, summaries))
        ratio_report = ratios(summaries)

    if args.json:
        report = {
            "suite": suite.name,
            "n": n,
            "rounds": args.rounds,
            "machine": {
                "python": platform.python_version(),
                "implementation": platform.python_implementation(),
                "platform": platform.platform(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
            },
            "peer_requirements": {k: list(PEER_REQUIREMENTS[k]) for k in pythons},
            "peer_environments": environments,
            "summaries": summaries,
            "ratios_vs_best_peer": ratio_report,
            "runs": {name: r.results for name, r in runs.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {args.json}")

    return 1 if any(r.failures for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
