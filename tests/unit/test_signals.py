"""A worker in a subprocess receiving SIGTERM/SIGINT while an actor runs: it stops taking
messages, waits up to `graceful_shutdown_time`, returns what still runs to the queue and exits 0.
The child (`_signal_worker.py`) prints markers and, at the end, its counters as JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

SCRIPT = Path(__file__).with_name("_signal_worker.py")
START_TIMEOUT = 15.0  # a cold interpreter importing pydantic on a loaded CI machine


class Child:
    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def wait_for_line(self, marker: str, timeout: float) -> None:
        """Read stdout until a line equal to `marker`; fail at the deadline or on EOF."""
        assert self.proc.stdout is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {marker!r} within {timeout}s; got {self.lines}")
            raw = await asyncio.wait_for(self.proc.stdout.readline(), remaining)
            if not raw:
                stderr = await self.stderr()
                raise AssertionError(f"child exited before {marker!r}: {self.lines}\n{stderr}")
            line = raw.decode().rstrip("\n")
            self.lines.append(line)
            if line == marker:
                return

    async def finish(self, timeout: float) -> tuple[int, str]:
        """Wait for the exit; return the exit code and the rest of stdout."""
        out, err = await asyncio.wait_for(self.proc.communicate(), timeout)
        self.lines.extend(out.decode().splitlines())
        assert self.proc.returncode is not None
        return self.proc.returncode, err.decode()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            return (await asyncio.wait_for(self.proc.stderr.read(), 2.0)).decode()
        return ""

    def report(self) -> dict[str, Any]:
        [line] = [line for line in self.lines if line.startswith("report ")]
        result: dict[str, Any] = json.loads(line.removeprefix("report "))
        return result

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def child_worker(mode: str, grace: float) -> Any:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(SCRIPT),
        mode,
        str(grace),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    child = Child(proc)
    try:
        yield child
    finally:
        await child.kill()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_returns_the_running_message_after_the_grace_period(
    sig: signal.Signals,
) -> None:
    grace = 0.5
    async with child_worker("async-stuck", grace) as child:
        await child.wait_for_line("started", START_TIMEOUT)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        child.proc.send_signal(sig)
        code, stderr = await child.finish(grace + 5.0)
        elapsed = loop.time() - sent
    assert code == 0, stderr
    assert grace * 0.9 <= elapsed < grace + 3.0  # waited for the actor, then gave up on it
    report = child.report()
    assert report["rejected"] == 1  # the running message went back to the queue
    assert report["succeeded"] == 0
    assert report["failed"] == 0  # cancelled by shutdown is not a failed attempt
    assert report["counts"] == {"ready": 2, "delayed": 0, "in_flight": 0, "dead": 0}
    assert "finished" not in child.lines
    assert child.lines[-1] == "exited"


async def test_signal_lets_a_short_actor_finish_and_takes_nothing_new() -> None:
    grace = 10.0
    async with child_worker("async-finishes", grace) as child:
        await child.wait_for_line("started", START_TIMEOUT)
        loop = asyncio.get_running_loop()
        sent = loop.time()
        child.proc.send_signal(signal.SIGTERM)
        code, stderr = await child.finish(grace)
        elapsed = loop.time() - sent
    assert code == 0, stderr
    assert elapsed < 3.0  # exits as soon as the actor is done, not after the grace period
    assert child.lines.count("started") == 1  # the second job was not taken
    assert "finished" in child.lines
    report = child.report()
    assert report["succeeded"] == 1
    assert report["rejected"] == 0
    assert report["counts"] == {"ready": 1, "delayed": 0, "in_flight": 0, "dead": 0}


async def test_signal_with_a_stuck_sync_actor_exits_after_the_grace_period() -> None:
    grace = 0.3
    async with child_worker("sync-stuck", grace) as child:
        await child.wait_for_line("started", START_TIMEOUT)
        child.proc.send_signal(signal.SIGTERM)
        await child.wait_for_line("exited", grace + 5.0)  # run() returned, main() is done
        report = child.report()
        assert report["rejected"] == 1
        assert report["counts"] == {"ready": 2, "delayed": 0, "in_flight": 0, "dead": 0}
        code, stderr = await child.finish(2.5)  # the process itself must end promptly too
    assert code == 0, stderr
