"""What `repid dead list` prints is readable: ISO times in JSON too, each error on one line."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from repid.cli import main

APP = "cli_broker_app:router"


def test_dead_list_json_has_iso_times_and_one_line_validation_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'dead.db'}"
    assert main(["declare", "-A", APP, "--broker", url]) == 0
    # Bad input from a producer that does not know the actor's signature.
    assert main(["enqueue", "work", "--args", '{"n": "not a number"}', "--broker", url]) == 0
    assert main(["run", "-A", APP, "--burst", "--concurrency", "2", "--broker", url]) == 0
    capsys.readouterr()

    assert main(["dead", "list", "default", "-A", APP, "--json", "--broker", url]) == 0
    [line] = capsys.readouterr().out.splitlines()
    letter = json.loads(line)
    assert letter["reason"] == "validation_error"
    assert datetime.fromisoformat(letter["dead_at"]).tzinfo is not None
    assert "\n" not in letter["error"]
    assert "n" in letter["error"]

    assert main(["dead", "list", "default", APP, "--broker", url]) == 0  # positional TARGET
    out = capsys.readouterr().out
    assert len(out.splitlines()) == 1
    assert letter["dead_at"] in out
    assert letter["error"] in out
