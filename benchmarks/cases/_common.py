"""Helpers shared by the case scripts.

Every case script is run in a fresh interpreter (possibly a peer's virtualenv, where repid is not
installed), so this module uses the standard library only.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
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
