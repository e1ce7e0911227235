"""What `decode_message` refuses before a worker sees it: bodies above the broker's
`max_message_size` (not parsed at all). Recurring schedules without a next run decode; the
worker dead-letters them with `schedule_error` (tests/conformance/test_settlement_errors.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from repid.codec import decode_message, encode_message
from repid.data import DelayProperties, Parameters, RoutingKey
from repid.errors import DecodeError


def _envelope(delay: DelayProperties | None = None, payload: str = "{}") -> bytes:
    params = Parameters() if delay is None else Parameters()._replace(delay=delay)
    return encode_message(RoutingKey("id1", "actor", "default"), payload, params)


def test_a_body_above_max_size_is_refused_unparsed() -> None:
    body = _envelope(payload='"' + "x" * 1000 + '"')
    assert decode_message(body, max_size=len(body))[0].id_ == "id1"
    with pytest.raises(DecodeError, match=rf"message of {len(body)} bytes .* \({len(body) - 1}\)"):
        decode_message(body, max_size=len(body) - 1)
    # Not parsed: garbage above the limit says "too large", not "not JSON".
    with pytest.raises(DecodeError, match="max_message_size"):
        decode_message(b"\xff" * 100, max_size=10)


def test_no_limit_by_default() -> None:
    body = _envelope(payload='"' + "x" * 100_000 + '"')
    assert decode_message(body)[1].startswith('"x')


def test_a_good_interval_decodes() -> None:
    params = decode_message(_envelope(DelayProperties(defer_by=timedelta(seconds=5))))[2]
    assert params.delay.defer_by == timedelta(seconds=5)
