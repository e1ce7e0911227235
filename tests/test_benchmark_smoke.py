"""The benchmarks cannot rot unnoticed: repid's cases still run (a small N), and the orchestrator
still records failures, stops runaway cases and picks the best peer correctly.

Peer virtualenvs are never created here (that needs PyPI and minutes); only repid's own cases
run, against the local servers for the network suites.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
CASES = ROOT / "benchmarks" / "cases"


def _load_run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module
    spec.loader.exec_module(module)
    return module


run = _load_run()


def _run_case(script: str, *args: str) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    result = subprocess.run(
        [sys.executable, str(CASES / script), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return figures


def test_repid_inmemory_case_runs_and_reports() -> None:
    figures = _run_case("repid_inmemory.py", "--n", "2000", "--timeout", "60")
    assert figures["jobs_run"] == 2000
    assert figures["enqueue_s"] > 0
    assert figures["drain_s"] > 0
    assert figures["peak_rss_mb"] > 0


def _check_network_figures(figures: dict[str, Any], n: int, latency_jobs: int) -> None:
    assert figures["case"] == "repid"
    assert figures["jobs_run"] == n
    assert figures["latency_jobs"] == latency_jobs
    for key in ("seq_enqueue_s", "conc_enqueue_s", "drain_launch_s", "drain_ready_s"):
        assert figures[key] > 0, key
    # Launch precedes ready: the drain from launch includes the worker's start-up.
    assert figures["drain_launch_s"] > figures["drain_ready_s"]
    assert figures["worker_startup_s"] > 0
    assert 0 < figures["latency_p50_ms"] <= figures["latency_p99_ms"]
    assert figures["worker_peak_rss_mb"] > 0
    assert figures["guarantees"]


@pytest.mark.broker("redis")
def test_repid_redis_case_runs_and_reports() -> None:
    figures = _run_case("repid_redis.py", "--n", "200", "--latency-jobs", "50", "--timeout", "60")
    _check_network_figures(figures, 200, 50)


def test_repid_sqlite_case_runs_and_reports() -> None:
    figures = _run_case("repid_sqlite.py", "--n", "200", "--latency-jobs", "50", "--timeout", "60")
    _check_network_figures(figures, 200, 50)


@pytest.mark.broker("rabbitmq")
def test_repid_rabbitmq_case_runs_and_reports() -> None:
    figures = _run_case(
        "repid_rabbitmq.py", "--n", "200", "--latency-jobs", "50", "--timeout", "60"
    )
    _check_network_figures(figures, 200, 50)


@pytest.mark.broker("kafka")
def test_repid_kafka_case_runs_and_reports() -> None:
    figures = _run_case("repid_kafka.py", "--n", "200", "--latency-jobs", "50", "--timeout", "60")
    _check_network_figures(figures, 200, 50)


@pytest.mark.broker("nats")
def test_repid_nats_case_runs_and_reports() -> None:
    figures = _run_case("repid_nats.py", "--n", "200", "--latency-jobs", "50", "--timeout", "60")
    _check_network_figures(figures, 200, 50)


# ------------------------------------------------------------------------------------------
# the orchestrator, on fake cases (no server, no peer virtualenv)

_GOOD = """
import json, sys
n = int(sys.argv[sys.argv.index("--n") + 1])
print(json.dumps({
    "case": "good", "framework": "good", "version": "1", "n": n, "concurrency": "1",
    "seq_enqueue_s": 1.0, "conc_enqueue_s": 0.5, "drain_launch_s": 2.0, "drain_ready_s": 1.0,
    "worker_startup_s": 1.0, "latency_p50_ms": 1.0, "latency_p99_ms": 2.0, "latency_jobs": 10,
    "worker_peak_rss_mb": 30.0, "jobs_run": n, "guarantees": "none", "notes": [],
}))
"""
_BAD = """
import json
print(json.dumps({"error": "broker said no"}))
raise SystemExit(1)
"""
_HANGS = """
import time
time.sleep(600)
"""


def _fake_suite(tmp_path: Path, **scripts: str) -> Any:
    cases = []
    for name, source in scripts.items():
        path = tmp_path / f"{name}.py"
        path.write_text(source)
        cases.append(run.Case(name, str(path), venv=None, concurrency=1))
    return run.Suite("fake", "fake cases", default_n=10, cases=tuple(cases), network=True)


def test_a_failing_case_is_recorded_and_the_rounds_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(run.SUITES, "fake", _fake_suite(tmp_path, bad=_BAD, good=_GOOD))
    out = tmp_path / "out.json"
    assert run.main(["fake", "--rounds", "2", "--json", str(out)]) == 1
    report = json.loads(out.read_text())
    bad, good = report["summaries"]
    assert bad["rounds_ok"] == 0
    assert len(bad["failures"]) == 2
    assert "broker said no" in bad["failures"][0]
    assert good["rounds_ok"] == 2
    assert good["seq_enqueue"] == 10.0  # N = 10 jobs in 1 s
    assert good["end_to_end"] == pytest.approx(10 / 3)


def test_a_case_past_its_timeout_is_stopped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run, "KILL_GRACE", 0.5)
    monkeypatch.setattr(run, "STOP_GRACE", 0.5)
    suite = _fake_suite(tmp_path, hangs=_HANGS)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="timed out"):
        run.run_case(suite.cases[0], Path(sys.executable), 10, 0.5)
    assert time.monotonic() - started < 30


def _net_summary(case: str, **figures: Any) -> dict[str, Any]:
    """A suite summary of `case` with these figures (the others unknown)."""
    return {
        "case": case,
        "rounds_ok": 3,
        "version": "1",
        "concurrency": "c",
        "end_to_end_spread": None,
        "failures": [],
        **{key: None for key, _, _ in run.NET_FIGURES},
        **figures,
    }


def test_ratios_take_the_best_peer_per_figure() -> None:
    def summary(case: str, seq: float, p50: float, rss: float) -> dict[str, Any]:
        return _net_summary(case, seq_enqueue=seq, latency_p50_ms=p50, worker_peak_rss_mb=rss)

    ratios = run.ratios_net(
        [
            summary("repid", seq=9000, p50=2.0, rss=40.0),
            summary("fast", seq=6000, p50=8.0, rss=60.0),
            summary("lean", seq=3000, p50=4.0, rss=20.0),
            {"case": "broken", "rounds_ok": 0},
            {**summary("raw", seq=90000, p50=0.1, rss=5.0), "reference": True},
            {**summary("repid-fast", seq=90000, p50=0.1, rss=5.0), "variant": True},
        ]
    )
    assert ratios["seq_enqueue"] == {"best_peer": "fast", "best_peer_value": 6000, "ratio": 1.5}
    assert ratios["latency_p50_ms"]["best_peer"] == "lean"
    assert ratios["latency_p50_ms"]["ratio"] == 0.5
    assert ratios["worker_peak_rss_mb"]["ratio"] == 2.0
    assert ratios["conc_enqueue"]["ratio"] is None


def test_a_reference_case_gets_its_own_ratio_row() -> None:
    table = run.render_markdown_net(
        run.SUITES["rabbitmq"],
        100,
        3,
        [
            _net_summary("repid", seq_enqueue=900),
            _net_summary("peer", seq_enqueue=600),
            _net_summary("raw", seq_enqueue=1000, reference=True),
        ],
    )
    assert "| **repid / best peer** | | | 1.50x |" in table
    assert "| **repid / raw** (reference) | | | 0.90x |" in table
