"""`ResultBucket` decoded: `value` and aware datetimes beside 1.6's raw `data` and ns times."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from repid import ResultBucket


def test_value_and_datetimes_beside_the_raw_fields() -> None:
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    started_ns = int(started.timestamp()) * 10**9
    bucket = ResultBucket('{"total": 3, "items": [1, 2]}', True, started_ns, started_ns + 1_500_000)
    assert bucket.data == '{"total": 3, "items": [1, 2]}'  # 1.6: raw JSON text
    assert (bucket.started_when, bucket.finished_when) == (started_ns, started_ns + 1_500_000)
    assert bucket.value == {"total": 3, "items": [1, 2]}
    assert bucket.started == started
    assert bucket.finished == started + timedelta(milliseconds=1.5)
    assert bucket.started is not None
    assert bucket.started.tzinfo is not None
    assert bucket.duration == timedelta(milliseconds=1.5)
    again = ResultBucket.decode(bucket.encode())
    assert (again.value, again.started, again.finished) == (bucket.value, started, bucket.finished)


def test_a_failure_has_no_value_and_unrecorded_times_are_none() -> None:
    failure = ResultBucket("boom", False, exception="ValueError")  # 1.6's failure layout
    assert failure.value is None
    assert failure.data == "boom"
    assert (failure.started, failure.finished, failure.duration) == (None, None, None)
