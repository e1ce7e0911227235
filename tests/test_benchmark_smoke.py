"""The benchmark's repid case still runs (a small N), so `benchmarks/` cannot rot unnoticed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_repid_inmemory_case_runs_and_reports() -> None:
    result = subprocess.run(
        [sys.executable, "benchmarks/cases/repid_inmemory.py", "--n", "2000", "--timeout", "60"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["jobs_run"] == 2000
    assert figures["enqueue_s"] > 0
    assert figures["drain_s"] > 0
    assert figures["peak_rss_mb"] > 0
