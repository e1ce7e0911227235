"""Credentials given to the CLI stay secret: not on child command lines, not in error messages."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from uuid import uuid4

import pytest

from repid import Job, Queue
from repid.cli import main
from repid.cli.target import CLIError, connection_from_url, kafka_options
from tests.conformance.specs import RUN_ID

SECRET = f"pw-{uuid4().hex}"
"""A password that Redis accepts: its default user has `nopass`, so any password will do."""
REDIS_URL = f"redis://default:{SECRET}@127.0.0.1:6379/0"
DEADLINE = 30.0


def poll(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # The command name (in parentheses) may contain spaces: the fields follow its last ")".
        if int(stat.rpartition(")")[2].split()[1]) == pid:
            found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


async def live_pids(queue: str) -> set[int]:
    connection = connection_from_url(REDIS_URL)
    await connection.connect()
    try:
        return {w.pid for w in await connection.live_workers() if queue in w.queues}
    finally:
        await connection.disconnect()


async def enqueue_work(queue: str, count: int) -> None:
    connection = connection_from_url(REDIS_URL)
    await connection.connect()
    try:
        for n in range(count):
            await Job("work", queue=queue, args={"n": n}, _connection=connection).enqueue()
    finally:
        await connection.disconnect()


async def delete_queue(queue: str) -> None:
    connection = connection_from_url(REDIS_URL)
    await connection.connect()
    try:
        await Queue(queue, _connection=connection).delete()
    finally:
        await connection.disconnect()


def test_supervised_children_get_the_urls_through_their_environment(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    queue = f"secrets_{RUN_ID}_{uuid4().hex[:8]}"
    marker = tmp_path / "marker.log"
    env = {**cli_env, "REPID_BROKER_URL": REDIS_URL, "REPID_TEST_QUEUE": queue}
    stderr = (tmp_path / "stderr.log").open("wb")
    # The broker URL from the environment, the results URL from an option: neither may reach
    # a child's argv.
    command = [sys.executable, "-m", "repid.cli", "run", "cli_broker_app:router"]
    supervisor = subprocess.Popen(
        [*command, "--processes", "2", "--concurrency", "2", "--results", REDIS_URL],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        poll(lambda: len(asyncio.run(live_pids(queue))) == 2, "both children connected")
        children = children_of(supervisor.pid)
        assert sorted(children) == sorted(asyncio.run(live_pids(queue)))
        for child in children:
            assert SECRET not in cmdline(child)
            assert "--broker" not in cmdline(child)
            assert "--results" not in cmdline(child)
        asyncio.run(enqueue_work(queue, 6))
        poll(
            lambda: marker.exists() and len(marker.read_text().splitlines()) == 6,
            "the children to run the jobs",
        )
        runners = {int(line.split()[2]) for line in marker.read_text().splitlines()}
        assert runners <= set(children)
    finally:
        supervisor.terminate()
        supervisor.wait(DEADLINE)
        stderr.close()
        asyncio.run(delete_queue(queue))
    assert supervisor.returncode == 0, (tmp_path / "stderr.log").read_text()
    assert SECRET not in (tmp_path / "stderr.log").read_text()


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--broker", f"nope://u:{SECRET}@h/"], "unknown broker URL 'nope://u:***@h/'"),
        (
            ["--broker", "amqp://h/", "--results", f"amqp://u:{SECRET}@h/"],
            "results URL 'amqp://u:***@h/'",
        ),
        (
            ["--broker", "amqp://h/", "--state", f"amqp://u:{SECRET}@h/?password={SECRET}"],
            "state URL 'amqp://u:***@h/?password=***'",
        ),
        (["--broker", f"kafka://user:{SECRET}@"], "broker URL 'kafka://user:***@'"),
        (["--broker", f"kafka://{SECRET}@h:1"], "Kafka credentials are user:password@"),
        (
            ["--broker", f"kafka://u:{SECRET}@h:1?sasl_mechanism=GSSAPI"],
            "sasl_mechanism must be one of",
        ),
    ],
)
def test_bad_urls_are_reported_without_their_password(
    argv: list[str], shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main(["queues", "cli_shop_app:orders", *argv])
    err = capsys.readouterr().err
    assert status == 1
    assert shown in err
    assert SECRET not in err


def test_an_unreachable_broker_is_reported_without_its_password(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for url in (f"redis://u:{SECRET}@127.0.0.1:1/0", f"kafka://u:{SECRET}@127.0.0.1:1"):
        assert main(["--traceback", "queues", "cli_shop_app:orders", "--broker", url]) == 1
        err = capsys.readouterr().err
        assert "unreachable" in err or "cannot connect" in err
        assert SECRET not in err


def test_kafka_user_info_becomes_sasl_credentials_not_a_host() -> None:
    servers, options = kafka_options(f"kafka://app%40corp:{SECRET}@k1:9092,k2:9093")
    assert servers == "k1:9092,k2:9093"
    assert options == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "PLAIN",
        "sasl_plain_username": "app@corp",
        "sasl_plain_password": SECRET,
    }
    _, scram = kafka_options(
        f"kafka://u:{SECRET}@k1:9092?sasl_mechanism=scram-sha-512&security_protocol=SASL_SSL"
    )
    assert (scram["sasl_mechanism"], scram["security_protocol"]) == ("SCRAM-SHA-512", "SASL_SSL")
    assert "ssl_context" in scram
    assert kafka_options("kafka://k1:9092") == ("k1:9092", {})
    broker = connection_from_url(f"kafka://u:{SECRET}@k1:9092").raw_message_broker
    assert broker.bootstrap_servers == "k1:9092"  # type: ignore[attr-defined]
    with pytest.raises(CLIError) as error:
        kafka_options(f"kafka://u:{SECRET}@k1:9092?security_protocol=PLAINTEXT")
    assert SECRET not in str(error.value)


def test_a_kafka_url_with_credentials_reaches_the_broker(
    capsys: pytest.CaptureFixture[str],
) -> None:
    bootstrap = os.environ.get("REPID_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    url = f"kafka://app:{SECRET}@{bootstrap}"  # the test broker accepts any SASL PLAIN login
    assert main(["queues", "cli_shop_app:orders", "--json", "--broker", url]) == 0
    out, err = capsys.readouterr()
    assert '"name": "orders"' in out
    assert SECRET not in out + err
