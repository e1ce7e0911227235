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
