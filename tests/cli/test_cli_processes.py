"""`repid run` as a process: burst mode, the multi-process supervisor, signals, recycling."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

DEADLINE = 10.0


def poll(condition: Callable[[], bool], what: str, timeout: float = DEADLINE) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def events(marker: Path) -> list[tuple[str, int]]:
    if not marker.exists():
        return []
    out = []
    for line in marker.read_text().splitlines():
        event, _, pid = line.rpartition(" ")
        if event:
            out.append((event, int(pid)))
    return out


def pids_with(marker: Path, event: str) -> list[int]:
    return [pid for name, pid in events(marker) if name == event]


class Repid:
    """A `python -m repid.cli` process whose stderr goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], tmp_path: Path) -> None:
        self.stderr_path = tmp_path / "stderr.log"
        self._stderr = self.stderr_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "repid.cli", *args],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=self._stderr,
        )

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"repid did not exit; stderr:\n{self.stderr}") from None

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._stderr.close()


@pytest.fixture
def spawn(cli_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Repid]]:
    started: list[Repid] = []

    def start(*args: str, **env: str) -> Repid:
        # A small --concurrency: the Worker's default of 1000 lanes costs ~0.5 s of start-up.
        if "--concurrency" not in args:
            args = (*args, "--concurrency", "4")
        proc = Repid(list(args), {**cli_env, **env}, tmp_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def marker(cli_env: dict[str, str]) -> Path:
    return Path(cli_env["REPID_TEST_MARKER"])


def test_burst_processes_the_ready_jobs_and_exits(spawn, marker: Path) -> None:
    repid = spawn("run", "cli_worker_app:start", "--burst", REPID_TEST_JOBS="3")
    assert repid.wait() == 0, repid.stderr
    done = sorted(name for name, _ in events(marker) if name.startswith("job-done"))
    assert done == ["job-done-0", "job-done-1", "job-done-2"]
    assert "4 processed" in repid.stderr


def test_queues_option_limits_what_is_consumed(spawn, marker: Path) -> None:
    repid = spawn("run", "cli_worker_app:start", "--burst", "--queues", "other")
    assert repid.wait() == 0, repid.stderr
    assert [name for name, _ in events(marker)] == ["started", "other"]


def test_burst_with_processes_exits_when_every_child_is_done(spawn, marker: Path) -> None:
    repid = spawn("run", "cli_worker_app:start", "--burst", "--processes", "2")
    assert repid.wait() == 0, repid.stderr
    assert len(set(pids_with(marker, "started"))) == 2
    assert len(pids_with(marker, "job-done-2")) == 2
    assert repid.stderr.count("finished") == 2  # not restarted


def test_sigterm_to_supervisor_stops_children_gracefully(spawn, marker: Path) -> None:
    repid = spawn(
        "run",
        "cli_worker_app:start",
        "--processes",
        "2",
        "--concurrency",
        "1",
        REPID_TEST_JOBS="1",
        REPID_TEST_JOB_SECONDS="0.5",
    )
    poll(lambda: len(set(pids_with(marker, "job-start-0"))) == 2, "both children mid-job")
    children = set(pids_with(marker, "job-start-0"))
    repid.process.send_signal(signal.SIGTERM)
    assert repid.wait() == 0, repid.stderr
    assert set(pids_with(marker, "job-done-0")) == children  # running jobs finished
    for pid in children:
        assert f"(pid {pid}) exited with code 0" in repid.stderr


def test_child_killed_with_sigkill_is_restarted(spawn, marker: Path) -> None:
    repid = spawn("run", "cli_worker_app:start", "--processes", "2", REPID_TEST_JOBS="0")
    poll(lambda: len(pids_with(marker, "started")) == 2, "two children started")
    victim = pids_with(marker, "started")[0]
    os.kill(victim, signal.SIGKILL)
    poll(lambda: len(pids_with(marker, "started")) == 3, "a replacement child")
    replacement = pids_with(marker, "started")[2]
    assert replacement != victim
    repid.process.send_signal(signal.SIGTERM)
    assert repid.wait() == 0, repid.stderr
    assert f"(pid {victim}) killed by SIGKILL; restarting" in repid.stderr


def test_max_jobs_per_child_recycles_the_child(spawn, marker: Path) -> None:
    repid = spawn(
        "run",
        "cli_worker_app:start",
        "--max-jobs-per-child",
        "2",
        "--queues",
        "work",
        REPID_TEST_JOBS="5",
    )
    poll(lambda: len(pids_with(marker, "started")) >= 3, "two recycles")
    first, second = pids_with(marker, "started")[:2]
    assert first != second
    for pid in (first, second):
        assert sum(1 for name, p in events(marker) if p == pid and "done" in name) == 2
    repid.process.send_signal(signal.SIGTERM)
    assert repid.wait() == 0, repid.stderr
    assert "recycled after its message limit" in repid.stderr


def test_children_stop_when_the_supervisor_dies(spawn, marker: Path) -> None:
    repid = spawn(
        "run",
        "cli_worker_app:start",
        "--processes",
        "1",
        "--max-jobs-per-child",
        "100",
        REPID_TEST_JOBS="0",
    )
    poll(lambda: len(pids_with(marker, "started")) == 1, "the child started")
    child = pids_with(marker, "started")[0]
    repid.process.kill()
    repid.process.wait()

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        # A zombie (exited, not yet reaped by init) counts as gone.
        status = Path(f"/proc/{child}/status")
        return status.exists() and "zombie" in status.read_text()

    poll(gone, "the orphaned child to stop")
