"""`Worker(dead_letter_ttl=, retention_interval=)` and `--older-than`: what they accept, and the
clear errors for what they do not."""

from __future__ import annotations

import argparse
from datetime import timedelta

import pytest

from repid import Worker
from repid.cli.options import duration
from repid.errors import ConfigurationError
from repid.worker.retention import RETENTION_ACTOR, RETENTION_QUEUE


def test_a_ttl_registers_the_sweeping_actor_on_its_queue() -> None:
    worker = Worker(dead_letter_ttl=timedelta(days=7), handle_signals=[])
    assert worker.dead_letter_ttl == 7 * 86400
    assert worker.retention_interval == 300.0
    assert worker.actors[RETENTION_ACTOR].queue == RETENTION_QUEUE
    assert RETENTION_QUEUE in worker.queues
    assert RETENTION_ACTOR not in Worker(handle_signals=[]).actors


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"dead_letter_ttl": 0}, "dead_letter_ttl must be > 0"),
        ({"dead_letter_ttl": timedelta(seconds=-1)}, "dead_letter_ttl must be > 0"),
        ({"retention_interval": 0.5}, "retention_interval must be >= 1 second"),
        ({"retention_interval": float("nan")}, "retention_interval must be > 0"),
    ],
)
def test_bad_retention_settings_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Worker(handle_signals=[], **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("12h", 43200.0), ("7d", 604800.0),
     ("2w", 1209600.0), ("1.5h", 5400.0), ("0.01", 0.01)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "soon", "7y", "-1d", "0", "nan"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        duration(text)
