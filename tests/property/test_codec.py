"""The wire envelope and the parameters round-trip; garbage is refused with `DecodeError` only."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from repid import (
    BasicConverter,
    Connection,
    DecodeError,
    InMemoryMessageBroker,
    Job,
    Parameters,
    PrioritiesT,
    RoutingKey,
)
from repid.codec import ENVELOPE_VERSION, decode_message, encode_message
from repid.data import (
    NO_TIMEOUT,
    DeadLetterInfo,
    DelayProperties,
    ResultProperties,
    RetriesProperties,
    TimerProperties,
)

from . import PROPERTY_SETTINGS

# Epoch seconds keep microseconds exactly up to ~2200; the envelope stores floats.
datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
durations = st.timedeltas(min_value=timedelta(0), max_value=timedelta(days=3650))
# Job validates schedules: intervals are >= 1 s, cron strings are not empty.
# Job validates timeouts: >= 1 s, or NO_TIMEOUT for `Job(timeout=None)` (sent as 0).
timeouts = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3650)) | st.just(
    NO_TIMEOUT
)
intervals = st.timedeltas(min_value=timedelta(seconds=1), max_value=timedelta(days=3650))
ids = st.text(min_size=1, max_size=40)
small_text = st.text(max_size=200)


@st.composite
def routing_keys(draw: st.DrawFn) -> RoutingKey:
    return RoutingKey(
        draw(ids), draw(ids), draw(ids), draw(st.sampled_from([p.value for p in PrioritiesT]))
    )


@st.composite
def dead_letters(draw: st.DrawFn) -> DeadLetterInfo:
    return DeadLetterInfo(
        reason=draw(st.sampled_from(["exception", "timeout", "expired", "manual", "x"])),
        error_type=draw(st.none() | small_text),
        error_message=draw(st.none() | small_text),
        traceback=draw(st.none() | st.text(max_size=2000)),
        attempts=draw(st.integers(min_value=0, max_value=10**6)),
        dead_at=draw(st.floats(min_value=0, max_value=1e10, allow_nan=False)),
    )


@st.composite
def delays(draw: st.DrawFn) -> DelayProperties:
    kind = draw(st.sampled_from(["none", "until", "interval", "cron"]))
    next_time = draw(st.none() | datetimes)
    if kind == "none":
        return DelayProperties()
    if kind == "until":
        return DelayProperties(delay_until=draw(datetimes), next_execution_time=next_time)
    if kind == "interval":
        return DelayProperties(defer_by=draw(intervals), next_execution_time=next_time)
    cron = draw(st.sampled_from(["* * * * *", "0 */2 * * *", "5 4 * * sun"]))
    return DelayProperties(cron=cron, next_execution_time=next_time)


@st.composite
def parameters(draw: st.DrawFn) -> Parameters:
    max_retries = draw(st.integers(min_value=0, max_value=1000))
    return Parameters(
        execution_timeout=draw(timeouts),
        retries=RetriesProperties(max_retries, draw(st.integers(0, max_retries))),
        result=draw(st.none() | st.builds(ResultProperties, ids, st.none() | durations)),
        delay=draw(delays()),
        timer=TimerProperties(draw(datetimes), draw(st.none() | durations)),
        args_id=draw(st.none() | ids),
        dead_letter=draw(st.none() | dead_letters()),
        headers=draw(st.none() | st.dictionaries(ids, small_text, min_size=1, max_size=5)),
    )


@PROPERTY_SETTINGS
@given(parameters())
def test_parameters_round_trip(params):
    encoded = params.encode()
    assert Parameters.decode(json.loads(json.dumps(encoded))) == params


@PROPERTY_SETTINGS
@given(routing_keys(), small_text, parameters())
def test_envelope_round_trip(key, payload, params):
    raw = encode_message(key, payload, params)
    assert isinstance(raw, bytes)
    assert decode_message(raw) == (key, payload, params)
    assert decode_message(raw.decode()) == (key, payload, params)


PRIORITIES = frozenset(p.value for p in PrioritiesT)


def _decodes_or_refuses(raw: bytes | str, *, reencodes: bool = True) -> None:
    """`decode_message` either returns a well-typed message or raises `DecodeError`."""
    try:
        key, payload, params = decode_message(raw)
    except DecodeError:
        return
    assert isinstance(key, RoutingKey)
    assert all(isinstance(part, str) for part in (key.id_, key.topic, key.queue))
    assert key.priority in PRIORITIES, f"decoded an out-of-range priority {key.priority!r}"
    assert isinstance(payload, str)
    assert isinstance(params, Parameters)
    if reencodes:
        # Whatever decodes is a valid message: it encodes again to the same thing.
        assert decode_message(encode_message(key, payload, params)) == (key, payload, params)


@PROPERTY_SETTINGS
@given(st.binary(max_size=300))
@example(b"")
@example(b"\xff\xfe")
@example(b"[]")
@example(b'{"v": 1}')
def test_arbitrary_bytes_decode_or_raise_decode_error(raw):
    _decodes_or_refuses(raw)


json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def near_envelopes(draw: st.DrawFn) -> bytes:
    """Envelope-shaped JSON with some fields replaced by arbitrary JSON values."""
    envelope: dict[str, Any] = json.loads(
        encode_message(draw(routing_keys()), draw(small_text), draw(parameters()))
    )
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.sampled_from(["v", "k", "p", "m", "k.i", "m.f"]))
        value = draw(json_values)
        if where == "k.i" and isinstance(envelope["k"], list) and len(envelope["k"]) == 4:
            envelope["k"][draw(st.integers(0, 3))] = value
        elif where == "m.f" and isinstance(envelope["m"], dict):
            field = draw(st.sampled_from(["t", "ts", "r", "res", "d", "ttl", "a", "dl", "h"]))
            envelope["m"][field] = value
        elif "." not in where:
            envelope[where] = value
    return json.dumps(envelope).encode()


@PROPERTY_SETTINGS
@given(near_envelopes())
def test_malformed_envelopes_decode_or_raise_decode_error(raw):
    # Field types inside "m" are checked by test_headers_that_are_not_an_object_*.
    _decodes_or_refuses(raw, reencodes=False)


def _envelope(key: list[Any], meta: dict[str, Any]) -> bytes:
    return json.dumps({"v": ENVELOPE_VERSION, "k": key, "p": "", "m": meta}).encode()


@pytest.mark.parametrize(
    "raw",
    [
        _envelope(["id", "topic", "queue", 1e400], {"ts": 0}),
        _envelope(["id", "topic", "queue", 1], {"ts": 1e400}),
        _envelope(["id", "topic", "queue", 1], {"ts": 0, "t": 1e300}),
        _envelope(["id", "topic", "queue", 1], {"ts": 0, "dl": {"reason": "x", "attempts": 1e400}}),
    ],
    ids=["priority-inf", "timestamp-inf", "timeout-huge", "attempts-inf"],
)
def test_out_of_range_numbers_raise_decode_error(raw):
    _decodes_or_refuses(raw)


@pytest.mark.parametrize("meta", [None, [], "", 1, True], ids=repr)
def test_non_object_parameters_raise_decode_error(meta):
    raw = json.dumps({"v": ENVELOPE_VERSION, "k": ["i", "t", "q", 1], "p": "", "m": meta})
    _decodes_or_refuses(raw)


def test_headers_that_are_not_an_object_raise_decode_error():
    _decodes_or_refuses(_envelope(["i", "t", "q", 1], {"ts": 0, "h": [["a"]]}))


@pytest.mark.parametrize("priority", [7, -1])
def test_out_of_range_priority_raises_decode_error(priority):
    _decodes_or_refuses(_envelope(["id", "topic", "queue", priority], {"ts": 0}))


def _accepts_anything(**kwargs: Any) -> None:
    pass


@PROPERTY_SETTINGS
@given(st.dictionaries(st.text(max_size=12), json_values, max_size=8))
def test_json_args_survive_job_to_converter(args):
    job = Job("actor", args=args, _connection=Connection(InMemoryMessageBroker()))
    key = RoutingKey("id", "actor", "default", PrioritiesT.MEDIUM.value)
    _, payload, _ = decode_message(encode_message(key, job.payload, Parameters()))
    positional, kwargs = BasicConverter(_accepts_anything).convert_inputs(payload)
    assert positional == []
    assert kwargs == args
