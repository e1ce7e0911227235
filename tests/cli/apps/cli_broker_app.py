"""A worker app for the CLI tests against real brokers: its connection comes from `--broker`.

The queue is `$REPID_TEST_QUEUE` (unique per test); each run appends `<event> <n> <pid>` to
`$REPID_TEST_MARKER`. `fail` always raises, without retries, so it ends in the dead letters.
"""

from __future__ import annotations

import os

from repid import Router, RouterDefaults

MARKER = os.environ.get("REPID_TEST_MARKER", os.devnull)
router = Router(defaults=RouterDefaults(queue=os.environ.get("REPID_TEST_QUEUE", "default")))


def mark(event: str, n: int) -> None:
    with open(MARKER, "a", encoding="utf-8") as marker:
        marker.write(f"{event} {n} {os.getpid()}\n")


@router.actor
async def work(n: int) -> None:
    mark("work", n)


@router.actor(retry_policy=lambda _attempt: 0)
async def fail(n: int) -> None:
    mark("fail", n)
    raise ValueError(f"failure {n}")
