"""`repid workers` lists the live workers of the broker."""

from __future__ import annotations

import json
import os

import pytest

from repid.cli import main


def test_workers_lists_a_running_worker_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "cli_live_app:with_running_worker", "--json"]) == 0
    [worker] = json.loads(capsys.readouterr().out)
    assert worker["queues"] == ["emails"]
    assert worker["concurrency"] == 3
    assert worker["pid"] == os.getpid()
    assert worker["in_flight"] == 0


def test_workers_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "cli_live_app:with_running_worker"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["WORKER", "QUEUES", "CONCURRENCY", "IN_FLIGHT", "LAST_SEEN"]
    assert "emails" in lines[1]


def test_workers_help() -> None:
    with pytest.raises(SystemExit) as leave:
        main(["workers", "--help"])
    assert leave.value.code == 0


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("amqp://guest:guest@127.0.0.1:5672/", "RabbitMessageBroker has no shared state here"),
        ("kafka://127.0.0.1:19092", "KafkaMessageBroker has no shared state here"),
        ("memory://", "the in-memory broker lives in one process"),
    ],
)
def test_workers_without_shared_state_say_why_the_list_is_short(
    url: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No broker round trip is needed for this: the registry is the command's own process's."""
    assert main(["workers", "cli_shop_app:orders", "--broker", url]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["WORKER", "QUEUES", "CONCURRENCY", "IN_FLIGHT", "LAST_SEEN"]
    [note] = captured.err.strip().splitlines()
    assert says in note
    assert "guest:guest" not in note
    if not url.startswith("memory"):
        assert "pass --state redis://" in note


def test_workers_with_shared_state_print_no_note(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["workers", "cli_shop_app:orders", "--broker", "redis://127.0.0.1:6379/0"]) == 0
    captured = capsys.readouterr()
    assert "note:" not in captured.err
