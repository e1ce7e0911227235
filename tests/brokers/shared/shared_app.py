"""The worker app of the multi-process lifecycle tests, run with `repid run shared_app:worker`.

Every actor run appends one line to the ledger file named by `REPID_LEDGER` (one `write` of a
short line to a file opened with O_APPEND is atomic), so the test reads what happened in every
process from one place: `<event> <actor> <pid> <time>`.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta

from repid import RateLimit, Router, RouterDefaults, Worker

router = Router(defaults=RouterDefaults(queue=os.environ.get("REPID_QUEUE", "default")))


def _record(event: str, actor: str) -> None:
    line = f"{event} {actor} {os.getpid()} {time.time():.6f}\n".encode()
    fd = os.open(os.environ["REPID_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


@router.actor
async def tick() -> None:
    _record("run", "tick")


@router.actor(max_concurrency=1)
async def exclusive(n: int) -> None:
    _record("start", "exclusive")
    await asyncio.sleep(0.05)  # the actor's work: long enough for overlaps to show
    _record("end", "exclusive")


@router.actor(retry_policy=lambda retry_number=1: 0)
async def endless(tag: str) -> None:
    _record("start", f"endless-{tag}")
    await asyncio.sleep(3600)
    _record("end", f"endless-{tag}")


@router.actor
async def once(tag: str) -> None:
    _record("run", f"once-{tag}")


@router.actor(rate_limit=RateLimit(2, per=timedelta(seconds=0.5)))
async def metered(n: int) -> None:
    _record("run", "metered")


worker = Worker(
    routers=[router],
    tasks_limit=10,
    handle_signals=None,
    graceful_shutdown_time=2.0,
    heartbeat_interval=float(os.environ.get("REPID_HEARTBEAT", "0.2")),
)
