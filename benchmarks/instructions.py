"""Deterministic cost of one job: CPU instructions per job counted by valgrind's callgrind.

Wall-clock throughput on a shared virtual machine varies by +-30% between runs; instruction
counts do not, so this is the figure to compare before and after a change to the hot path.
Runs the in-memory case (enqueue N jobs, drain them with one worker) under callgrind twice, with
N jobs and with 1 job, and prints (instructions(N) - instructions(1)) / (N - 1).

    python benchmarks/instructions.py [--n 20000]

Needs `valgrind` (Debian package) and the real interpreter binary (not a pyenv shim).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

CASE = Path(__file__).resolve().parent / "cases" / "repid_inmemory.py"
ROOT = CASE.parents[2]


def interpreter() -> str:
    """The interpreter binary itself: valgrind must not trace a wrapper script."""
    binary = (
        Path(sysconfig.get_config_var("BINDIR") or "") / f"python{sysconfig.get_python_version()}"
    )
    return str(binary) if binary.exists() else os.path.realpath(sys.executable)


def instructions(n: int) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        result = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                f"--callgrind-out-file={out}",
                interpreter(),
                str(CASE),
                "--n",
                str(n),
                "--concurrency",
                "100",
            ],
            capture_output=True,
            text=True,
            env=env,
            check=False,
        )
        match = re.search(r"Collected : (\d+)", result.stderr)
        if result.returncode != 0 or match is None:
            raise SystemExit(f"callgrind run failed:\n{result.stdout}\n{result.stderr[-2000:]}")
        return int(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    full = instructions(args.n)
    base = instructions(1)
    per_job = (full - base) / (args.n - 1)
    print(f"N={args.n}: {full:,} instructions; N=1: {base:,}; per job: {per_job:,.0f}")


if __name__ == "__main__":
    main()
