"""Redis Cluster: a private 3-master cluster (`redis-server --cluster-enabled yes` on free
loopback ports, joined by `redis-cli --cluster create`), started on the first connection the
suite asks for and stopped when the test process exits; the broker uses a `RedisCluster` client.
Run with `REPID_REDIS_CLUSTER=1 python -m pytest tests/conformance -k redis_cluster`.
"""

from __future__ import annotations

import atexit
import os
import random
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis.asyncio

from repid import Connection, RedisBucketBroker, RedisMessageBroker
from tests.conformance.specs import RUN_ID, BrokerSpec
from tests.conformance.specs.redis import SPEC as _SINGLE

PREFIX = f"repid-test:{RUN_ID}:"
MASTERS = 3


def _free_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    rng = random.Random()
    while True:
        port = rng.randint(20000, 55000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port


class RedisCluster:
    """A private cluster of `MASTERS` masters in a temporary directory."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="repid-redis-cluster-"))
        self.ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            pytest.fail("redis-server and redis-cli are needed for the Redis Cluster tests")
        for _ in range(MASTERS):
            port = _free_port()
            node = self.directory / str(port)
            node.mkdir()
            log = (node / "redis.log").open("ab")
            self.processes.append(
                subprocess.Popen(
                    [
                        server,
                        "--port",
                        str(port),
                        "--bind",
                        "127.0.0.1",
                        "--dir",
                        str(node),
                        "--cluster-enabled",
                        "yes",
                        "--cluster-config-file",
                        "nodes.conf",
                        "--appendonly",
                        "no",
                        "--save",
                        "",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
            self.ports.append(port)
        for port in self.ports:
            _wait_for_ping(port)
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports), "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        deadline = time.monotonic() + 30
        while (
            b"cluster_state:ok"
            not in subprocess.run(
                [cli, "-p", str(self.ports[0]), "cluster", "info"], capture_output=True, check=True
            ).stdout
        ):
            if time.monotonic() > deadline:
                raise AssertionError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait(10)
        shutil.rmtree(self.directory, ignore_errors=True)


def _wait_for_ping(port: int) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"redis-server on port {port} did not start")
        time.sleep(0.05)


_CLUSTER: RedisCluster | None = None


def cluster() -> RedisCluster:
    """The session's cluster, started on first use (stopped at exit)."""
    global _CLUSTER
    if _CLUSTER is None:
        _CLUSTER = RedisCluster()
        atexit.register(_CLUSTER.stop)
        _CLUSTER.start()
    return _CLUSTER


def cluster_client() -> redis.asyncio.RedisCluster:
    """A new `RedisCluster` client of the session's cluster."""
    return redis.asyncio.RedisCluster(host="127.0.0.1", port=cluster().ports[0])


def _owned(broker: RedisMessageBroker | RedisBucketBroker) -> None:
    broker.link._owned = True  # type: ignore[attr-defined]  # the test's client: closed with it


def _redis_cluster(*, lease_duration: float | None = None, args_bucket: bool = False) -> Connection:
    options = {} if lease_duration is None else {"lease_duration": lease_duration}
    broker = RedisMessageBroker(client=cluster_client(), prefix=PREFIX, **options)
    results = RedisBucketBroker(client=cluster_client(), prefix=PREFIX, use_result_bucket=True)
    args = RedisBucketBroker(client=cluster_client(), prefix=PREFIX) if args_bucket else None
    for each in (broker, results, args):
        if each is not None:
            _owned(each)
    return Connection(broker, args_bucket_broker=args, results_bucket_broker=results)


SPEC: BrokerSpec | None = (
    BrokerSpec(make=_redis_cluster, capabilities=_SINGLE.capabilities)
    if os.environ.get("REPID_REDIS_CLUSTER") == "1"
    else None
)
"""Opt-in (`REPID_REDIS_CLUSTER=1`): on a loaded machine 2 of its 80 tests still failed
(a rate-limit window 1 ms short, a 60 s time-out), so it is not yet part of the default run."""
