"""repid, in-memory broker: N sequential enqueues, then one worker drains the full queue.

Runs in the interpreter that repid is installed in (the orchestrator also puts the project root
on PYTHONPATH). Prints one JSON line (see `_common.CaseResult`).

Phases:
  enqueue  N sequential `await Job("noop", args={"n": i}).enqueue()` calls; no worker is running.
  drain    from creating the Worker until the N-th job has run (`Worker.run()` returns after
           `messages_limit` messages; the done event confirms the N-th actor call completed).
"""

from __future__ import annotations

import asyncio
import time

from _common import CaseResult, fail, parse_args, peak_rss_mb, version_of


async def main() -> None:
    args = parse_args(__doc__ or "", default_concurrency=1000)
    n: int = args.n

    try:
        from repid import (
            Connection,
            InMemoryMessageBroker,
            Job,
            Queue,
            Repid,
            Router,
            Worker,
        )
    except ImportError as exc:
        fail(f"repid is not importable with this API: {exc!r}")
        return

    app = Repid(Connection(InMemoryMessageBroker()))
    router = Router()
    count = 0
    done = asyncio.Event()

    @router.actor
    async def noop(n: int) -> None:
        nonlocal count
        count += 1
        if count == args.n:
            done.set()

    async with app.magic(auto_disconnect=True):
        await Queue().declare()
        rss_after_setup = peak_rss_mb()

        t0 = time.perf_counter()
        for i in range(n):
            await Job("noop", args={"n": i}).enqueue()
        t1 = time.perf_counter()
        ran_during_enqueue = count

        try:
            async with asyncio.timeout(args.timeout):
                await Worker(
                    routers=[router],
                    messages_limit=n,
                    tasks_limit=args.concurrency,
                    handle_signals=[],
                ).run()
                await done.wait()
        except TimeoutError:
            fail(f"timed out after {args.timeout:.0f}s waiting for the N-th job", jobs_run=count)
        t2 = time.perf_counter()

    CaseResult(
        case="repid",
        framework="repid",
        version=version_of("repid"),
        n=n,
        concurrency=f"tasks_limit={args.concurrency}",
        enqueue_s=t1 - t0,
        drain_s=t2 - t1,
        total_s=t2 - t0,
        peak_rss_mb=peak_rss_mb(),
        rss_after_setup_mb=rss_after_setup,
        jobs_run=count,
        ran_during_enqueue=ran_during_enqueue,
    ).emit()


if __name__ == "__main__":
    asyncio.run(main())
