"""`default_retry_policy_factory`: bounded, monotone, and equal to its documented formula."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from repid import default_retry_policy_factory
from repid.retry_policy import retry_delay

from . import PROPERTY_SETTINGS

seconds = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False),
)
multipliers = st.one_of(
    st.integers(min_value=0, max_value=10**4),
    st.floats(min_value=0, max_value=1e4, allow_nan=False, allow_infinity=False),
)
exponents = st.integers(min_value=0, max_value=64)
retry_numbers = st.integers(min_value=0, max_value=10**6)


@st.composite
def policies(draw: st.DrawFn) -> tuple[float, float, float, int]:
    low = draw(seconds)
    high = draw(seconds)
    low, high = min(low, high), max(low, high)
    return low, high, draw(multipliers), draw(exponents)


def documented(
    min_backoff: float, max_backoff: float, multiplier: float, max_exponent: int, n: int
):
    return max(min_backoff, min(multiplier * 2 ** min(n, max_exponent), max_backoff))


@PROPERTY_SETTINGS
@given(policies(), retry_numbers)
def test_delay_is_within_min_and_max(args, n):
    low, high, _, _ = args
    delay = default_retry_policy_factory(*args)(n)
    assert isinstance(delay, timedelta)
    assert timedelta(seconds=low) <= delay <= timedelta(seconds=high)


@PROPERTY_SETTINGS
@given(policies(), retry_numbers, st.integers(min_value=0, max_value=1000))
def test_delay_is_monotone_in_the_retry_number(args, n, step):
    policy = default_retry_policy_factory(*args)
    assert policy(n) <= policy(n + step)


@PROPERTY_SETTINGS
@given(policies(), retry_numbers)
def test_delay_equals_the_documented_formula(args, n):
    delay = default_retry_policy_factory(*args)(n)
    assert delay == timedelta(seconds=documented(*args, n))


@PROPERTY_SETTINGS
@given(policies(), retry_numbers)
def test_retry_delay_normalises_the_policy(args, n):
    policy = default_retry_policy_factory(*args)
    assert retry_delay(policy, n) == policy(n)


@PROPERTY_SETTINGS
@given(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6))
def test_retry_delay_of_plain_seconds_is_never_negative(value):
    assert retry_delay(lambda n=1: value, 1) == max(timedelta(seconds=value), timedelta(0))


@PROPERTY_SETTINGS
@given(seconds, seconds)
def test_invalid_bounds_are_rejected(low, high):
    assume(high < low)
    with pytest.raises(ValueError, match="min_backoff"):
        default_retry_policy_factory(low, high)


def test_defaults_follow_repid_1_6():
    policy = default_retry_policy_factory()
    assert [policy(n).total_seconds() for n in (1, 2, 3)] == [10, 20, 40]
    assert policy(10**9) == timedelta(seconds=86400)
