"""Retry policies: how long to wait before retry number `n`."""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from repid.errors import ConfigurationError

__all__ = ["RetryPolicyT", "default_retry_policy_factory", "retry_delay"]


class RetryPolicyT(Protocol):
    """Any callable `(retry_number) -> timedelta` (numbers are taken as seconds)."""

    def __call__(self, retry_number: int = 1) -> timedelta | int | float: ...


def default_retry_policy_factory(
    min_backoff: int | float = 10,
    max_backoff: int | float = 86400,
    multiplier: int | float = 5,
    max_exponent: int = 15,
) -> RetryPolicyT:
    """Exponential backoff, in seconds.

    The delay of retry `n` is
    `max(min_backoff, min(multiplier * 2 ** min(n, max_exponent), max_backoff))`.

    Args:
        min_backoff: shortest delay, in seconds.
        max_backoff: longest delay, in seconds.
        multiplier: seconds multiplied by `2 ** n`.
        max_exponent: cap of the exponent, so huge retry numbers do not overflow.
    """
    if min_backoff < 0 or max_backoff < min_backoff:
        raise ConfigurationError("retry policy needs 0 <= min_backoff <= max_backoff")

    def retry_policy(retry_number: int = 1) -> timedelta:
        exponent = min(max(retry_number, 0), max_exponent)
        seconds = max(min_backoff, min(multiplier * 2**exponent, max_backoff))
        return timedelta(seconds=seconds)

    return retry_policy


def retry_delay(policy: RetryPolicyT, retry_number: int) -> timedelta:
    """Call a policy and normalise its answer to a non-negative timedelta."""
    value = policy(retry_number)
    if isinstance(value, timedelta):
        delay = value
    elif isinstance(value, int | float):
        delay = timedelta(seconds=value)
    else:
        raise TypeError(
            f"retry policy returned {type(value).__name__}, expected timedelta or seconds"
        )
    return max(delay, timedelta(0))
