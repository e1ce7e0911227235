"""`repid run` for development and its logs: `--reload`, the start-up banner, `--log-jobs`, `-A`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import repid

DEADLINE = 60.0  # the machine is shared: a worker start-up can take seconds


def poll(condition: Callable[[], bool], what: str, step: Callable[[], None] | None = None) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        if step is not None:
            step()
        time.sleep(0.05)


def started_pids(marker: Path) -> list[int]:
    if not marker.exists():
        return []
    return [
        int(line.split()[1])
        for line in marker.read_text().splitlines()
        if line.startswith("started ")
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def run_cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repid.cli", *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_reload_starts_a_new_worker_process_when_a_file_changes(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    marker = Path(cli_env["REPID_TEST_MARKER"])
    stderr = (tmp_path / "stderr.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "repid.cli",
            "run",
            "-A",
            "cli_worker_app:start",
            "--reload",
            "--concurrency",
            "2",
        ],
        env=cli_env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        poll(lambda: len(started_pids(marker)) == 1, "the first worker")
        first = started_pids(marker)[0]
        log_path = tmp_path / "stderr.log"
        edits = iter(range(10**6))
        next_touch = 0.0

        def touch() -> None:  # until the reloader saw one: it may not be watching yet
            nonlocal next_touch
            if "restarting the worker" in log_path.read_text() or time.monotonic() < next_touch:
                return
            (tmp_path / "edited.py").write_text(f"X = {next(edits)}\n")
            next_touch = time.monotonic() + 2.0

        poll(lambda: len(started_pids(marker)) >= 2, "a restarted worker", step=touch)
        second = started_pids(marker)[1]
        assert second != first
        poll(lambda: not alive(first), "the old worker to exit")
        process.send_signal(signal.SIGTERM)
        assert process.wait(DEADLINE) == 0
        poll(lambda: all(not alive(pid) for pid in started_pids(marker)), "every worker to exit")
        log = (tmp_path / "stderr.log").read_text()
        assert "edited.py changed; restarting the worker" in log
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        stderr.close()


def test_banner_log_jobs_and_summary_with_retried(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(
        ["run", "-A", "cli_worker_app:start", "--burst", "--log-jobs", "--concurrency", "3"],
        {**cli_env, "REPID_TEST_JOBS": "2"},
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    banner = next(line for line in result.stderr.splitlines() if "worker (pid" in line)
    assert f"repid {repid.__version__} worker" in banner
    assert "broker InMemoryMessageBroker" in banner
    assert "consuming other, work:" in banner or "consuming work, other:" in banner
    assert "concurrency 3" in banner
    done = [line for line in result.stderr.splitlines() if " succeeded in " in line]
    assert len(done) == 3  # work[0], work[1], other
    assert all(line.split(" succeeded in ")[1].rstrip().endswith("s") for line in done)
    assert any("work[" in line for line in done)
    assert "0 retried" in result.stderr


def test_no_job_lines_without_log_jobs(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = run_cli(["run", "cli_worker_app:start", "--burst"], cli_env, tmp_path)
    assert result.returncode == 0, result.stderr
    assert " succeeded in " not in result.stderr


def test_app_option_stands_for_target_and_one_is_required(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    by_option = run_cli(["queues", "-A", "cli_shop_app:orders", "--json"], cli_env, tmp_path)
    by_position = run_cli(["queues", "cli_shop_app:orders", "--json"], cli_env, tmp_path)
    assert by_option.returncode == 0, by_option.stderr
    assert by_option.stdout == by_position.stdout
    missing = run_cli(["queues"], cli_env, tmp_path)
    assert missing.returncode == 2
    assert "-A/--app" in missing.stderr
