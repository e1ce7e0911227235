"""Background supervisors of a run: the timeout watchdog, the heartbeat in the worker registry,
the cancellation watcher and the lease renewal. Each is one task, cancelled when the run ends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time

from repid.brokers.base import SupportsCancellation, SupportsWorkerRegistry
from repid.lifecycle import WorkerInfo
from repid.worker.state import RunnerState, logger

WATCHDOG_INTERVAL = 0.05
"""How often running actors are checked against their deadline (timeouts are >= 1 s)."""
CANCEL_POLL_INTERVAL = 0.1
"""How often running jobs are checked for cancellation requests."""


class Supervisors(RunnerState):
    """Starts the background tasks that watch the lanes while the run lasts."""

    async def _start_supervisors(self) -> list[asyncio.Task[None]]:
        helpers = [self._start_watchdog()]
        if self.cancellation is not None:
            helpers.append(self._start_cancel_watcher(self.cancellation))
        if self.registry is not None:
            helpers.append(await self._start_heartbeat(self.registry))
        renewal = self._start_lease_renewal()
        if renewal is not None:
            helpers.append(renewal)
        return helpers

    def _start_watchdog(self) -> asyncio.Task[None]:
        """Cancel actors that run past their deadline.

        One task checks every lane a few times a second instead of arming a timer per message;
        timeouts are at least one second, so the precision is ample and the hot path pays only
        for storing a deadline.
        """

        async def watch() -> None:
            loop = asyncio.get_running_loop()
            while True:
                await asyncio.sleep(WATCHDOG_INTERVAL)
                now = loop.time()
                for lane in self._lane_states:
                    if lane.deadline <= now and not lane.timed_out and not lane.cancel_requested:
                        lane.timed_out = True
                        lane.task.cancel()

        return asyncio.create_task(watch(), name="repid-timeout-watchdog")

    async def _start_heartbeat(self, registry: SupportsWorkerRegistry) -> asyncio.Task[None]:
        """Register this worker in the broker's registry and keep it fresh until it stops."""
        host = socket.gethostname()
        worker_id = self.worker_id
        started = time.time()
        queues = tuple(sorted({actor.queue for actor in self.actors.values()}))

        def info() -> WorkerInfo:
            in_flight = sum(1 for lane in self._lane_states if lane.current is not None)
            return WorkerInfo(
                worker_id,
                host,
                os.getpid(),
                queues,
                self.worker.tasks_limit,
                in_flight,
                started,
                time.time(),
            )

        try:
            await registry.heartbeat(info())
        except Exception:  # the broker may be down at start-up: the loop below retries
            logger.exception("heartbeat failed; will retry")

        async def beat() -> None:
            try:
                while True:
                    await asyncio.sleep(self.worker.heartbeat_interval)
                    try:
                        await registry.heartbeat(info())
                    except Exception:
                        logger.exception("heartbeat failed; will retry")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.shield(registry.unregister_worker(worker_id))

        return asyncio.create_task(beat(), name="repid-heartbeat")

    def _start_cancel_watcher(self, cancellation: SupportsCancellation) -> asyncio.Task[None]:
        """Cancel running actors whose jobs were cancelled (`Job.cancel`) on any producer."""

        async def watch() -> None:
            while True:
                await asyncio.sleep(CANCEL_POLL_INTERVAL)
                running = {
                    lane.current.key.id_: lane
                    for lane in self._lane_states
                    if lane.in_actor and lane.current is not None
                }
                if not running:
                    continue
                try:
                    requested = await cancellation.cancelled_ids(list(running))
                except Exception:
                    logger.exception("checking for cancelled jobs failed; will retry")
                    continue
                for job_id in requested:
                    lane = running[job_id]
                    # Still the same actor run, and not already being interrupted?
                    if lane.in_actor and not lane.cancel_requested and not lane.timed_out:
                        lane.cancel_requested = True
                        lane.task.cancel()

        return asyncio.create_task(watch(), name="repid-cancel-watcher")

    def _start_lease_renewal(self) -> asyncio.Task[None] | None:
        """Renew the leases of taken deliveries at a third of the lease, on leasing brokers."""
        caps = self.connection.raw_message_broker.capabilities
        if not caps.lease_renewal or not caps.lease_duration:
            return None
        interval = caps.lease_duration / 3

        async def renew_forever() -> None:
            while True:
                await asyncio.sleep(interval)
                running = self._running()
                if running:
                    try:
                        await self.broker.renew(running)
                    except Exception:
                        logger.exception("lease renewal failed; will retry")

        return asyncio.create_task(renew_forever(), name="repid-lease-renewal")
