"""`Runner`: one run of a worker, from its start to its graceful shutdown (signals, lanes,
supervisors, consumers, pools and the health-check server, in that order)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal

from repid.brokers.base import Delivery
from repid.worker.lanes import Lanes
from repid.worker.state import Lane, logger
from repid.worker.supervisors import Supervisors

__all__ = ["Runner"]


class Runner(Lanes, Supervisors):
    """One run of a worker: its lanes, consumers and counters.

    Counters: `processed` (every message taken and settled), `succeeded`, `failed` (attempts
    that raised or timed out), `retried`, `dead_lettered`, `rejected` (returned on shutdown),
    `snoozed`, `cancelled`.
    """

    async def run(self) -> None:
        """Consume until a stop is requested, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        installed = self._install_signal_handlers(loop)
        try:
            await self._start_health_check()
            async with contextlib.AsyncExitStack() as stack:
                stack.callback(self._shutdown_pools)
                if self.actors:
                    source = await self._open_sources(stack)
                    self._loop_time = loop.time
                    lanes = int(min(self.worker.tasks_limit, self._tickets or math.inf))
                    for i in range(lanes):
                        lane = Lane()
                        lane.task = asyncio.create_task(
                            self._lane(lane, source), name=f"repid-lane-{i}"
                        )
                        lane.task.add_done_callback(self._on_lane_done)
                        self._lanes_alive += 1
                        self._lane_states.append(lane)
                    self._lanes = [lane.task for lane in self._lane_states]
                    helpers = await self._start_supervisors() + self._start_liveness_watch()
                    try:
                        await self._stop.wait()
                    finally:
                        await self._shutdown()
                        for helper in helpers:
                            helper.cancel()
                        await asyncio.gather(*helpers, return_exceptions=True)
                else:
                    await self._stop.wait()
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)
            if self._health is not None:
                await self._health.stop()

    def _on_lane_done(self, task: asyncio.Task[None]) -> None:
        self._lanes_alive -= 1
        if task.cancelled() or task.exception() is None:
            if self.drain and self._lanes_alive == 0:
                self.request_stop()
            return
        logger.critical("a worker lane crashed; stopping the worker", exc_info=task.exception())
        self.crashed = task.exception()
        self.request_stop()

    def _install_signal_handlers(self, loop: asyncio.AbstractEventLoop) -> list[signal.Signals]:
        installed = []
        for sig in self.worker.handle_signals:
            try:
                loop.add_signal_handler(sig, self.request_stop)
            except (ValueError, RuntimeError, NotImplementedError):
                logger.warning("cannot handle %s here (not the main thread?); ignored", sig)
            else:
                installed.append(sig)
        return installed

    async def process_delivery(self, delivery: Delivery) -> None:
        """Run one delivery to its outcome in the calling task (no lanes, no timeout watchdog).

        Used by `repid.testing` to run actors right when a job is enqueued.
        """
        lane = Lane()
        task = asyncio.current_task()
        assert task is not None
        lane.task = task
        try:
            await self._process(lane, delivery)
        finally:
            self._settled.discard(id(delivery))
        self._count_processed()
