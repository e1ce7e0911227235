"""Jitter of recurring jobs: each run moved by a random share, the schedule's phase kept."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from repid import Job
from repid.data import DelayProperties, Parameters, TimerProperties
from repid.errors import ConfigurationError

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _params(delay: DelayProperties) -> Parameters:
    return Parameters(delay=delay, timer=TimerProperties(T0))


def test_an_interval_with_jitter_does_not_drift_over_many_runs() -> None:
    step = timedelta(seconds=60)
    params = _params(DelayProperties(None, step, None, T0, timedelta(seconds=30), 0.0))
    offsets = []
    for n in range(1, 301):
        due = params.delay.next_execution_time
        assert due is not None
        # the run starts at its moved time and takes a moment
        params = params.for_next_tick(due + timedelta(seconds=0.5))
        delay = params.delay
        assert delay.next_execution_time is not None
        offsets.append(delay.jitter_offset)
        assert 0.0 <= delay.jitter_offset < 30.0
        tick = delay.next_execution_time - timedelta(seconds=delay.jitter_offset)
        assert abs((tick - (T0 + n * step)).total_seconds()) < 1e-6, n
    assert len(set(offsets)) > 250  # a fresh draw each run
    assert 5.0 < sum(offsets) / len(offsets) < 25.0


def test_a_cron_schedule_with_jitter_moves_each_run_past_its_tick() -> None:
    pytest.importorskip("croniter")
    params = _params(DelayProperties(None, None, "*/5 * * * *", T0, timedelta(seconds=60), 0.0))
    nxt = params.for_next_tick(T0 + timedelta(seconds=10)).delay
    assert nxt.next_execution_time is not None
    moved = (nxt.next_execution_time - (T0 + timedelta(minutes=5))).total_seconds()
    assert 0.0 <= moved < 60.0
    assert moved == pytest.approx(nxt.jitter_offset)


def test_jitter_travels_on_the_wire_and_old_messages_still_decode() -> None:
    delay = DelayProperties(None, timedelta(seconds=60), None, T0, timedelta(seconds=5), 2.5)
    back = Parameters.decode(_params(delay).encode()).delay
    assert back == delay
    plain = _params(DelayProperties(None, timedelta(seconds=60), None, T0))
    encoded = plain.encode()
    assert len(encoded["d"]) == 4  # no jitter: the wire format of before
    assert Parameters.decode(encoded).delay.jitter is None


def test_without_jitter_the_schedule_is_exact() -> None:
    params = _params(DelayProperties(None, timedelta(seconds=60), None, T0))
    nxt = params.for_next_tick(T0 + timedelta(seconds=1)).delay
    assert nxt.next_execution_time == T0 + timedelta(seconds=60)
    assert nxt.jitter_offset == 0.0


def test_jitter_is_checked_where_the_job_is_made() -> None:
    with pytest.raises(ConfigurationError, match="jitter is for recurring jobs"):
        Job("x", jitter=timedelta(seconds=5))
    with pytest.raises(ConfigurationError, match="must be shorter than deferred_by"):
        Job("x", deferred_by=timedelta(seconds=10), jitter=timedelta(seconds=10))
    with pytest.raises(ConfigurationError, match="Jitter must be greater than or equal to 1"):
        Job("x", deferred_by=timedelta(seconds=10), jitter=timedelta(milliseconds=10))
    job = Job("x", deferred_by=timedelta(seconds=10), jitter=timedelta(seconds=3))
    assert job.jitter == timedelta(seconds=3)
