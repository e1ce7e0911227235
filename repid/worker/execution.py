"""Running actor code: sync actors in a reused thread pool (or process pool), with the clock of
their timeout started when a pool thread actually starts them."""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Any

from repid._executor import DaemonThreadPool
from repid.worker.state import Lane, RunnerState

_MAX_THREADS = 64
"""Sync actors share at most this many threads (fewer when `tasks_limit` is lower)."""


def start_clock(
    fn: Callable[..., Any], lane: Lane, clock: Callable[[], float], timeout: float
) -> Callable[..., Any]:
    """`fn`, setting the lane's deadline when it starts (in the pool thread)."""

    def timed(*args: Any, **kwargs: Any) -> Any:
        lane.deadline = clock() + timeout  # a float store: safe from another thread
        return fn(*args, **kwargs)

    return timed


class Execution(RunnerState):
    """The pools that run sync actors, created on first use and reused for the whole run."""

    def _run_sync(
        self,
        fn: Callable[..., Any],
        kwargs: dict[str, Any],
        in_process: bool,
        args: Sequence[Any] = (),
    ) -> asyncio.Future[Any]:
        executor: Executor
        if in_process:
            if self._process_pool is None:
                from concurrent.futures import ProcessPoolExecutor  # multiprocessing: on use

                self._process_pool = ProcessPoolExecutor()
            executor = self._process_pool
        else:
            if self._thread_pool is None:
                self._thread_pool = DaemonThreadPool(
                    max_workers=min(self.worker.tasks_limit, _MAX_THREADS),
                    thread_name_prefix="repid-actor",
                )
            executor = self._thread_pool
        call = functools.partial(fn, *args, **kwargs) if args or kwargs else fn
        if not in_process:
            # Threads see the caller's context variables (trace context, etc.).
            call = functools.partial(contextvars.copy_context().run, call)
        return asyncio.get_running_loop().run_in_executor(executor, call)

    def close(self) -> None:
        """Release the thread and process pools (done by `run()` itself when it ends)."""
        self._shutdown_pools()

    def _shutdown_pools(self) -> None:
        if self._thread_pool is not None:
            self._thread_pool.shutdown(wait=False, cancel_futures=True)
        if self._process_pool is not None:
            self._process_pool.shutdown(wait=False, cancel_futures=True)
