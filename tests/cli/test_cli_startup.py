"""`repid run` started before its broker: it waits for it (`--startup-timeout`), then works."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid4

import pytest

from repid import Connection, Job, Queue, RedisMessageBroker
from tests.brokers.redis.redis_test_support import RedisServer, _free_port

pytestmark = pytest.mark.broker("redis")

DEADLINE = 30.0
APP = "cli_broker_app:router"


def _start(env: dict[str, str], log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "repid.cli", "run", APP, *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )


def _until(condition: object, what: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():  # type: ignore[operator]
        if process.poll() is not None:
            pytest.fail(
                f"the worker exited ({process.returncode}) before {what}:\n"
                + log.read_text(errors="replace")
            )
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}:\n" + log.read_text(errors="replace"))
        time.sleep(0.02)


def _stop(process: subprocess.Popen[bytes]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(DEADLINE)
    finally:
        if process.poll() is None:
            process.kill()


def _until_unreachable(worker: subprocess.Popen[bytes], log: Path) -> None:
    _until(
        lambda: "unreachable" in log.read_text(errors="replace"),
        "the worker to report the broker unreachable",
        worker,
        log,
    )


def test_a_worker_started_before_its_broker_waits_for_it(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    server = RedisServer(tmp_path)
    queue = f"startup_{uuid4().hex[:8]}"
    cli_env["REPID_TEST_QUEUE"] = queue
    marker = Path(cli_env["REPID_TEST_MARKER"])
    log = tmp_path / "worker.log"
    worker = _start(cli_env, log, "--broker", server.dsn, "--startup-timeout", str(DEADLINE))
    try:
        _until_unreachable(worker, log)
        server.start()

        async def enqueue() -> None:
            connection = Connection(RedisMessageBroker(server.dsn))
            await connection.connect()
            try:
                await Queue(queue, _connection=connection).declare()
                await Job("work", queue=queue, args={"n": 7}, _connection=connection).enqueue()
            finally:
                await connection.disconnect()

        asyncio.run(enqueue())
        _until(
            lambda: marker.exists() and "work 7" in marker.read_text(),
            "the job to run",
            worker,
            log,
        )
        assert _stop(worker) == 0, log.read_text(errors="replace")
    finally:
        _stop(worker)
        server.stop()


def test_the_wait_ends_with_a_one_line_error_after_the_startup_timeout(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    dsn = f"redis://127.0.0.1:{_free_port()}/0"
    started = time.monotonic()
    worker = _start(cli_env, log, "--broker", dsn, "--startup-timeout", "0.5")
    code = worker.wait(DEADLINE)
    assert code == 1
    errors = [line for line in log.read_text().splitlines() if line.startswith("repid: error:")]
    assert len(errors) == 1, log.read_text()
    assert "Redis" in errors[0]
    assert time.monotonic() - started < DEADLINE


def test_a_stop_signal_ends_the_wait_at_once(cli_env: dict[str, str], tmp_path: Path) -> None:
    log = tmp_path / "worker.log"
    dsn = f"redis://127.0.0.1:{_free_port()}/0"
    worker = _start(cli_env, log, "--broker", dsn, "--startup-timeout", "600")
    try:
        _until_unreachable(worker, log)
        signalled = time.monotonic()
        assert _stop(worker) == 0, log.read_text(errors="replace")
        assert time.monotonic() - signalled < 5.0
    finally:
        _stop(worker)
