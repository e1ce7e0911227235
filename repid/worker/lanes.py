"""The lanes: `tasks_limit` tasks that each take a delivery from the consumers and process it,
the sources they take from (one consumer, several through an inbox, or drain mode), surviving
broker errors with backoff, and the graceful shutdown of the lanes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any

from repid.brokers.base import Delivery
from repid.errors import BrokerAuthenticationError, BrokerUnavailableError
from repid.worker.outage import PROBE_WAIT, Outages, Source
from repid.worker.processing import Processing
from repid.worker.state import DrainedError, Lane, logger

YIELD_EVERY = 32
"""A lane that never suspends (no-op actors, messages ready) yields to the loop this often."""
DRAIN_WAIT = 0.1
"""In drain mode, how long a lane waits for a ready message before deciding a queue is empty."""


class Lanes(Processing, Outages):
    """Takes deliveries from the broker and processes them, `tasks_limit` at a time."""

    async def _start_patiently(self, consumer: Any, name: str) -> None:
        """Start `consumer`; while the broker is unreachable (it may restart just as the worker
        starts), retry with backoff for up to the worker's `startup_timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.worker.startup_timeout
        backoff = 0.1
        while True:
            try:
                await consumer.start()
                return
            except BrokerAuthenticationError:
                raise  # a refused login does not heal by waiting
            except BrokerUnavailableError as exc:
                if loop.time() + backoff > deadline or self._stop.is_set():
                    raise
                logger.warning(
                    "opening the consumer of %r failed (%s); retrying in %.1fs", name, exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)

    async def _open_sources(self, stack: contextlib.AsyncExitStack) -> Source:
        prefetch = self.worker.prefetch
        queues = sorted({actor.queue for actor in self.actors.values()})
        for name in queues:
            consumer = self.broker.get_consumer(name, None, prefetch)
            await self._start_patiently(consumer, name)
            stack.push_async_callback(consumer.finish)
            self._consumers.append(consumer)
        for consumer in self._consumers:
            self._probes[consumer.consume] = _probe(consumer, PROBE_WAIT)
        if self.drain:
            consumers = list(self._consumers)

            async def fetch_ready() -> list[Delivery]:
                for consumer in consumers:
                    batch: list[Delivery] = await consumer.fetch(1, DRAIN_WAIT)
                    if batch:
                        return batch
                return []

            async def take_ready() -> Delivery:
                batch = await fetch_ready()
                if batch:
                    return batch[0]
                raise DrainedError

            self._probes[take_ready] = fetch_ready
            return take_ready
        if len(self._consumers) == 1:
            consume: Source = self._consumers[0].consume
            return consume
        # Several queues: one pump per consumer feeds a shared inbox. Pumps take messages only
        # while lanes wait for one, so at most one message per pump waits unstarted in the
        # inbox (and the lease renewal covers those too).
        inbox: asyncio.Queue[Delivery] = asyncio.Queue()
        self._inbox = inbox
        demand = asyncio.Event()
        waiting = 0

        async def pump(consumer: Any) -> None:
            while True:
                await demand.wait()
                delivery = await self._guarded_consume(consumer.consume)
                if delivery is None:
                    return
                inbox.put_nowait(delivery)
                if inbox.qsize() >= waiting:
                    demand.clear()

        async def take() -> Delivery:
            nonlocal waiting
            waiting += 1
            try:
                if waiting > inbox.qsize():
                    demand.set()
                return await inbox.get()
            finally:
                waiting -= 1

        pumps = [asyncio.create_task(pump(c)) for c in self._consumers]

        async def stop_pumps() -> None:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            while not inbox.empty():  # taken but never started: give back at once
                await self._settle("reject", inbox.get_nowait())

        self._stop_taking = stop_pumps
        stack.push_async_callback(stop_pumps)
        return take

    async def _lane(self, lane: Lane, source: Source) -> None:
        since_yield = 0
        while not self._stopping:
            if self._tickets is not None:
                if self._tickets <= 0:
                    return
                self._tickets -= 1
            lane.idle = True
            try:
                delivery = await source()
            except asyncio.CancelledError:
                return  # stopping while waiting for a message (consume is cancel-safe)
            except DrainedError:
                return
            except Exception as exc:
                recovered = await self._guarded_consume(source, exc)
                if recovered is None:
                    return
                delivery = recovered
            lane.idle = False
            if self._stopping:  # taken in the same instant the stop came: give it back
                await self._settle("reject", delivery)
                return
            lane.current = delivery
            try:
                await self._process(lane, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in repid itself must not kill the lane
                await self._broken(delivery, exc)
            finally:
                self._settled.discard(id(delivery))
            lane.current = None
            self._count_processed()
            since_yield += 1
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    async def _shutdown(self) -> None:
        self._stopping = True
        for lane in self._lane_states:
            if lane.idle:  # waiting for a message: safe to cancel (consume is cancel-safe)
                lane.task.cancel()
        if self._stop_taking is not None:
            await self._stop_taking()
        lanes = self._lanes
        if not lanes:
            return
        _, pending = await asyncio.wait(lanes, timeout=self.worker.graceful_shutdown_time)
        if pending:
            logger.warning(
                "%d actors still running after %.1fs; cancelling them and returning their messages",
                sum(1 for lane in self._lane_states if lane.current is not None),
                self.worker.graceful_shutdown_time,
            )
            for task in pending:
                task.cancel()
            await asyncio.wait(pending)


def _probe(consumer: Any, wait: float) -> Callable[[], Awaitable[list[Delivery]]]:
    async def probe() -> list[Delivery]:
        batch: list[Delivery] = await consumer.fetch(1, wait)
        return batch

    return probe
