"""End-to-end throughput benchmarks: repid against peer job-queue frameworks.

    python benchmarks/run.py inmemory [--n N] [--rounds R] [--json PATH]

Each case is a standalone script under `benchmarks/cases/` that runs one framework once and
prints one JSON line (`cases/_common.py: CaseResult`). This orchestrator:

* creates a virtualenv per peer under `benchmarks/.venvs/<peer>` with pinned versions (once;
  it is rebuilt when the pins or the Python version change),
* runs every case in its own fresh interpreter, rounds interleaved
  (repid, peer1, peer2, repid, peer1, ...), so neither peak RSS nor warm-up leaks between cases,
* reports the median of each figure over the rounds and repid's ratio to the best peer.

The repid case runs with this interpreter (`sys.executable`), with the project root put on
PYTHONPATH so an editable install is not strictly required. See `benchmarks/README.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
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

#: Pinned requirements of each peer's virtualenv. Bump deliberately, and say so in the README.
PEER_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "taskiq": ("taskiq==0.13.0",),
    "dramatiq": ("dramatiq[redis,rabbitmq]==2.2.1",),
    "arq": ("arq==0.28.0",),
    "saq": ("saq[redis]==0.26.4",),
    "taskiq-redis": ("taskiq-redis==1.2.4", "taskiq==0.13.0"),
    "streaq": ("streaq==7.2.0",),
    "celery": ("celery[redis]==5.7.0",),
    "faststream": ("faststream[redis,rabbit,kafka]==0.7.8",),
    "repid-2": ("repid[redis]==2.1.4",),
    "taskiq-aio-pika": ("taskiq-aio-pika==0.6.1", "taskiq==0.13.0"),
    "aiokafka": ("aiokafka==0.14.0",),
}


@dataclass(frozen=True)
class Case:
    """One framework in one suite.

    `venv` is the key of `PEER_REQUIREMENTS` whose virtualenv runs the script, or `None` for this
    interpreter (the repid case). `concurrency` is passed as `--concurrency` (tasks or threads, as
    the framework has it; 0 where it does not apply).
    """

    name: str
    script: str
    venv: str | None
    concurrency: int


@dataclass(frozen=True)
class Suite:
    name: str
    description: str
    default_n: int
    cases: tuple[Case, ...]


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
    # Later: "redis", "rabbitmq", "kafka" suites, whose cases start from the same scripts'
    # shape and whose orchestration may first check that the server is reachable.
}

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


def run_case(case: Case, python: Path, n: int, timeout: float) -> dict[str, Any]:
    """Run one case once in a fresh interpreter; return its JSON result or raise RuntimeError."""
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
    try:
        proc = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            timeout=timeout + 60,
            env=env,
            cwd=PROJECT_ROOT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise RuntimeError(f"timed out after {exc.timeout:.0f}s") from exc

    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    result: dict[str, Any] | None = None
    if lines:
        try:
            result = json.loads(lines[-1])
        except json.JSONDecodeError:
            result = None
    if proc.returncode != 0 or result is None or "error" in result:
        detail = (result or {}).get("error") or _tail(proc.stderr) or _tail(proc.stdout)
        raise RuntimeError(f"exit {proc.returncode}: {detail}")
    if result["jobs_run"] != n:
        raise RuntimeError(f"ran {result['jobs_run']} jobs, expected {n}")
    return result


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


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    suite = SUITES[args.suite]
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

    runs = {c.name: CaseRuns(c) for c in cases}
    for round_no in range(1, args.rounds + 1):
        for case in cases:
            python = Path(sys.executable) if case.venv is None else pythons[case.venv]
            started = time.perf_counter()
            try:
                result = run_case(case, python, n, args.timeout)
            except RuntimeError as exc:
                runs[case.name].failures.append(f"round {round_no}: {exc}")
                _log(f"[round {round_no}/{args.rounds}] {case.name}: FAILED {exc}")
                continue
            runs[case.name].results.append(result)
            e2e = rates(result)["end_to_end"]
            _log(
                f"[round {round_no}/{args.rounds}] {case.name}: {_fmt_rate(e2e)} jobs/s end-to-end,"
                f" peak RSS {result['peak_rss_mb']:.1f} MB"
                f" ({time.perf_counter() - started:.1f}s wall)"
            )

    summaries = [summarize(runs[c.name]) for c in cases]
    print(render_markdown(suite, n, args.rounds, summaries))

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
            "ratios_vs_best_peer": ratios(summaries),
            "runs": {name: r.results for name, r in runs.items()},
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        _log(f"wrote {args.json}")

    return 1 if any(r.failures for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
