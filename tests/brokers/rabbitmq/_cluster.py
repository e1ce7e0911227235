"""A private 3-node RabbitMQ cluster on loopback for the tests (session fixture `rabbit_cluster`).

Each node has its own node name, ports and data directory, all share one Erlang cookie; the
second and third join the first with `rabbitmqctl join_cluster`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos._servers import RabbitServer


class RabbitCluster:
    """Three `RabbitServer` nodes joined in one cluster."""

    def __init__(self, directory: Path, size: int = 3) -> None:
        cookie = f"REPIDCLUSTER{os.getpid()}"
        self.nodes: list[RabbitServer] = []
        for index in range(size):
            node = RabbitServer(directory / f"node{index}")
            path = node.directory / ".erlang.cookie"
            path.chmod(0o600)
            path.write_text(cookie)
            path.chmod(0o400)
            self.nodes.append(node)

    @property
    def urls(self) -> list[str]:
        return [node.url for node in self.nodes]

    def start(self, timeout: float = 120.0) -> None:
        errors: list[BaseException] = []

        def start(node: RabbitServer) -> None:
            try:
                node.start(timeout)
            except BaseException as exc:  # reported below, in the test's thread
                errors.append(exc)

        threads = [threading.Thread(target=start, args=(node,)) for node in self.nodes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app", timeout=60)
            node.ctl("join_cluster", first.node, timeout=120)
            node.ctl("start_app", timeout=120)
        running = first.ctl("cluster_status", "--formatter", "json", timeout=60)
        for node in self.nodes:
            assert node.node in running, f"{node.node} did not join the cluster: {running}"

    def close(self) -> None:
        for node in self.nodes:
            node.close()


@pytest.fixture(scope="session", name="rabbit_cluster")
def rabbit_cluster_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RabbitCluster]:
    """A 3-node cluster, started once per session (it costs tens of seconds on a busy host)."""
    cluster = RabbitCluster(tmp_path_factory.mktemp("rabbit-cluster"))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.close()
