"""`repid.brokers.base.poll_bucket`, the result-wait poll loop of `Job.wait` and the Redis
bucket broker: returns what it finds, gives up at the deadline, backs off between reads."""

from __future__ import annotations

import asyncio
import time

from repid.brokers.base import poll_bucket
from repid.data import ResultBucket

BUCKET = ResultBucket(data="1", started_when=0, finished_when=0, success=True)


class Reads:
    """A `get` that finds the bucket at its `found_at`-th call (never when 0); records times."""

    def __init__(self, found_at: int = 0) -> None:
        self.found_at = found_at
        self.times: list[float] = []

    async def __call__(self) -> ResultBucket | None:
        self.times.append(time.monotonic())
        return BUCKET if len(self.times) == self.found_at else None


async def test_returns_the_bucket_as_soon_as_a_read_finds_it() -> None:
    reads = Reads(found_at=3)
    assert await poll_bucket(reads, None, first_pause=0.001, max_pause=0.002) is BUCKET
    assert len(reads.times) == 3


async def test_gives_up_at_the_deadline_with_a_last_read_there() -> None:
    reads = Reads()
    started = time.monotonic()
    assert await poll_bucket(reads, 0.2, first_pause=0.5, max_pause=0.5) is None
    elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 2.0  # the 0.5 s pause was cut at the deadline
    assert len(reads.times) == 2  # at the start and at the deadline
    assert reads.times[-1] - started >= 0.19


async def test_the_pause_doubles_up_to_its_cap() -> None:
    reads = Reads()
    assert await poll_bucket(reads, 0.5, first_pause=0.02, max_pause=0.08) is None
    gaps = [b - a for a, b in zip(reads.times, reads.times[1:], strict=False)]
    expected = [0.02, 0.04, 0.08, 0.08]
    for gap, least in zip(gaps, expected, strict=False):
        assert gap >= least * 0.9, gaps  # a sleep never ends early
    # Reads at 0, 0.02, 0.06, 0.14, ... 0.46 and at the deadline: at most 9, however fast.
    assert 4 <= len(reads.times) <= 9, gaps


async def test_timeout_zero_reads_once() -> None:
    reads = Reads()
    assert await asyncio.wait_for(poll_bucket(reads, 0, first_pause=1, max_pause=1), 2) is None
    assert len(reads.times) == 1
