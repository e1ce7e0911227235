"""The `repid` command as operators run it, as subprocesses against each real broker.

enqueue → queues (depth) → run --burst (drains, exits 0) → dead list → dead requeue → dead purge,
with the queue's state read back through the CLI itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from uuid import uuid4

import pytest

from tests.conformance.specs import RUN_ID

URLS = {
    "redis": os.environ.get("REPID_REDIS_DSN", "redis://127.0.0.1:6379/0"),
    "rabbitmq": os.environ.get("REPID_RABBITMQ_DSN", "amqp://guest:guest@127.0.0.1:5672/"),
    "kafka": "kafka://" + os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092"),
    "nats": os.environ.get("REPID_NATS_SERVERS", "nats://127.0.0.1:4222"),
}
TIMEOUT = 60
APP = "cli_broker_app:router"


@pytest.fixture(params=sorted(URLS))
def broker_url(request: pytest.FixtureRequest) -> str:
    return URLS[request.param]


def repid(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "repid.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


def sizes(env: dict[str, str], queue: str) -> dict[str, object]:
    out = ok(repid(env, "queues", APP, "--json"))
    [row] = [row for row in json.loads(out) if row["name"] == queue]
    return dict(row)


def dead(env: dict[str, str], queue: str) -> list[str]:
    out = ok(repid(env, "dead", "list", queue, APP, "--json"))
    return [json.loads(line)["actor"] for line in out.splitlines()]


def test_operator_round_trip(broker_url: str, cli_env: dict[str, str]) -> None:
    queue = f"cli_{RUN_ID}_{uuid4().hex[:8]}"
    env = {**cli_env, "REPID_BROKER_URL": broker_url, "REPID_TEST_QUEUE": queue}
    marker = Path(env["REPID_TEST_MARKER"])
    try:
        assert ok(repid(env, "declare", APP)) == f"declared {queue}\n"
        for n in range(3):
            ok(repid(env, "enqueue", "work", "--args", json.dumps({"n": n}), "--queue", queue))
        ok(repid(env, "enqueue", "fail", "--args", '{"n": 7}', "--queue", queue))
        ok(repid(env, "enqueue", "work", "--args", '{"n": 9}', "--queue", queue, "--delay", "600"))
        before = sizes(env, queue)
        assert (before["ready"], before["delayed"], before["dead"]) == (4, 1, 0)

        ok(repid(env, "run", APP, "--burst"))
        runs = sorted(line.split()[:2] for line in marker.read_text().splitlines())
        assert runs == [["fail", "7"], ["work", "0"], ["work", "1"], ["work", "2"]]
        after = sizes(env, queue)
        assert (after["ready"], after["delayed"], after["dead"]) == (0, 1, 1)

        out = ok(repid(env, "dead", "list", queue, APP, "--json"))
        listed = [json.loads(line) for line in out.splitlines()]  # JSON lines
        assert [(d["actor"], d["error"]) for d in listed] == [("fail", "ValueError: failure 7")]
        ok(repid(env, "dead", "requeue", queue, APP))
        assert dead(env, queue) == []
        ok(repid(env, "run", APP, "--burst"))
        assert dead(env, queue) == ["fail"]  # failed again: back in the dead letters
        ok(repid(env, "dead", "purge", queue, APP))
        assert dead(env, queue) == []
        if not broker_url.startswith("kafka://"):  # Kafka's counts are estimated from offsets
            assert sizes(env, queue)["dead"] == 0

        bad = repid(env, "enqueue", "work", "--args", "[1]", "--queue", queue)
        assert bad.returncode != 0
        assert len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    finally:
        subprocess.run(
            [sys.executable, "-c", _DELETE, broker_url, queue], env=env, timeout=TIMEOUT, check=True
        )


_DELETE = """
import asyncio, sys
from repid import Queue
from repid.cli.target import connection_from_url

async def main():
    conn = connection_from_url(sys.argv[1])
    await conn.connect()
    await Queue(sys.argv[2], _connection=conn).delete()
    await conn.disconnect()

asyncio.run(main())
"""


def test_dead_requeue_and_purge_select_by_id_reason_and_limit(cli_env: dict[str, str]) -> None:
    """`--id`, `--reason`, `--limit`, `--older-than` on a real broker (Redis: the CLI runs in
    new processes)."""
    url = URLS["redis"]
    queue = f"cli_{RUN_ID}_{uuid4().hex[:8]}"
    env = {**cli_env, "REPID_BROKER_URL": url, "REPID_TEST_QUEUE": queue}
    try:
        ok(repid(env, "declare", APP))
        for n in range(3):
            ok(repid(env, "enqueue", "fail", "--args", json.dumps({"n": n}), "--queue", queue))
        ok(repid(env, "run", APP, "--burst"))
        out = ok(repid(env, "dead", "list", queue, APP, "--json"))
        ids = [json.loads(line)["id_"] for line in out.splitlines()]
        assert len(ids) == 3

        requeued = ok(repid(env, "dead", "requeue", queue, APP, "--id", ids[0]))
        assert requeued == f"requeued 1 dead message(s) of {queue!r}\n"
        out = ok(repid(env, "dead", "list", queue, APP, "--json"))
        assert sorted(json.loads(line)["id_"] for line in out.splitlines()) == sorted(ids[1:])
        assert sizes(env, queue)["ready"] == 1

        none = ok(repid(env, "dead", "purge", queue, APP, "--reason", "timeout"))
        assert none == f"purged 0 dead message(s) of {queue!r}\n"
        one = ok(repid(env, "dead", "purge", queue, APP, "--reason", "exception", "--limit", "1"))
        assert one == f"purged 1 dead message(s) of {queue!r}\n"
        assert len(dead(env, queue)) == 1
        young = ok(repid(env, "dead", "list", queue, APP, "--json", "--older-than", "1h"))
        assert young == ""
        kept = ok(repid(env, "dead", "purge", queue, APP, "--older-than", "7d"))
        assert kept == f"purged 0 dead message(s) of {queue!r}\n"
        old = ok(repid(env, "dead", "purge", queue, APP, "--older-than", "0.01"))
        assert old == f"purged 1 dead message(s) of {queue!r}\n"
        assert dead(env, queue) == []
        bad = repid(env, "dead", "purge", queue, APP, "--reason", "nope")
        assert bad.returncode == 2
        assert "invalid choice: 'nope'" in bad.stderr
        bad = repid(env, "dead", "list", queue, APP, "--older-than", "soon")
        assert bad.returncode == 2
        assert "expected a duration such as 90s" in bad.stderr
    finally:
        subprocess.run(
            [sys.executable, "-c", _DELETE, url, queue], env=env, timeout=TIMEOUT, check=True
        )


def test_queue_flush_and_delete(cli_env: dict[str, str]) -> None:
    """`repid queue flush|delete QUEUE` on Redis; off a terminal they need `--yes`."""
    url = URLS["redis"]
    queue = f"cli_{RUN_ID}_{uuid4().hex[:8]}"
    env = {**cli_env, "REPID_BROKER_URL": url, "REPID_TEST_QUEUE": queue}
    try:
        ok(repid(env, "declare", APP))
        for n in range(2):
            ok(repid(env, "enqueue", "work", "--args", json.dumps({"n": n}), "--queue", queue))
        ok(repid(env, "enqueue", "work", "--args", '{"n": 9}', "--queue", queue, "--delay", "600"))
        refused = repid(env, "queue", "flush", queue)
        assert refused.returncode == 1
        assert "pass --yes to confirm" in refused.stderr
        assert (sizes(env, queue)["ready"], sizes(env, queue)["delayed"]) == (2, 1)

        assert ok(repid(env, "queue", "flush", queue, "--yes")) == f"flushed {queue}\n"
        after = sizes(env, queue)
        assert (after["declared"], after["ready"], after["delayed"]) == (True, 0, 0)

        assert ok(repid(env, "queue", "delete", queue, "--yes")) == f"deleted {queue}\n"
        assert sizes(env, queue)["declared"] is False
    finally:
        subprocess.run(
            [sys.executable, "-c", _DELETE, url, queue], env=env, timeout=TIMEOUT, check=True
        )
