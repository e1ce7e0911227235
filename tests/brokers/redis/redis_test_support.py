"""Helpers of the Redis-specific tests (imported by the tests and their conftest)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from repid import Connection, RedisBucketBroker, RedisMessageBroker


def make_connection(dsn: str, prefix: str, **options: float | None) -> Connection:
    return Connection(
        RedisMessageBroker(dsn, prefix=prefix, **options),  # type: ignore[arg-type]
        results_bucket_broker=RedisBucketBroker(dsn, prefix=prefix, use_result_bucket=True),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private `redis-server` with an append-only file fsynced on every write."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = _free_port()
        self.dsn = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed")
        log = (self.directory / "redis.log").open("ab")
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(self.directory),
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the private redis-server did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop gracefully (SIGTERM: the append-only file is flushed)."""
        if self.process is not None:
            self.process.terminate()
            self.process.wait(10)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


def worker_env(dsn: str, prefix: str, queue: str, **extra: str) -> dict[str, str]:
    here = Path(__file__).parent
    env = dict(os.environ)
    env.update(
        REPID_REDIS_DSN=dsn,
        REPID_PREFIX=prefix,
        REPID_QUEUE=queue,
        PYTHONPATH=os.pathsep.join(filter(None, [str(here.parents[2]), env.get("PYTHONPATH")])),
        **extra,
    )
    return env
