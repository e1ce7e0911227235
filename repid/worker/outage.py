"""Surviving a broker outage: when consuming fails, one lane leads (logs once per backoff step,
probes the broker), the other lanes wait for its probe, and the worker reports UNHEALTHY from the
first failure until a probe has reached the broker again."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Final

from repid.brokers.base import Delivery
from repid.errors import ConsumerClosedError
from repid.worker.health import Health
from repid.worker.state import DrainedError, logger

Source = Callable[[], Awaitable[Delivery]]
Probe = Callable[[], Awaitable[list[Delivery]]]

FIRST_BACKOFF = 0.1
MAX_BACKOFF = 5.0
PROBE_WAIT = 1.0
"""How long a probe (`fetch`) waits for a message once it reached the broker."""


class _Recovered:
    """The probe reached the broker and took no message."""


_RECOVERED: Final = _Recovered()


class Outages(Health):
    """`_guarded_consume`: consume through broker failures, one probing lane per source."""

    def _probe_for(self, consume: Source) -> Probe:
        probe = self._probes.get(consume)
        if probe is not None:
            return probe

        async def take_one() -> list[Delivery]:  # no fetch to probe with: a delivery proves it
            return [await consume()]

        return take_one

    async def _guarded_consume(
        self, consume: Source, error: Exception | None = None
    ) -> Delivery | None:
        """Consume, surviving broker errors with backoff; None when the consumer is closed.

        `error` is a failure the caller already got from `consume()`. The first lane that fails
        leads the outage (see `_lead_outage`); the lanes failing meanwhile wait for it, silently.
        """
        while True:
            if error is None:
                try:
                    return await consume()
                except (ConsumerClosedError, DrainedError):
                    return None
                except Exception as exc:
                    error = exc
            if isinstance(error, ConsumerClosedError) or self._stop.is_set():
                return None
            over = self._outages.get(consume)
            if over is not None:  # another lane leads this outage: wait for its probe
                await over.wait()
                error = None
                continue
            over = asyncio.Event()
            self._outages[consume] = over
            try:
                found = await self._lead_outage(consume, error)
            finally:
                del self._outages[consume]
                over.set()
            if not isinstance(found, _Recovered):
                return found
            error = None

    async def _lead_outage(self, consume: Source, error: Exception) -> Delivery | _Recovered | None:
        """Back off and probe until the broker answers; UNHEALTHY meanwhile.

        Logs the failure once per backoff step. Returns the delivery the successful probe took,
        `_RECOVERED` when it took none, or None when the consumer closed or the worker stops.
        """
        probe = self._probe_for(consume)
        backoff = FIRST_BACKOFF
        self._set_health(False)
        while True:
            if isinstance(error, ConsumerClosedError) or self._stop.is_set():
                return None
            logger.error("consuming failed (%r); retrying in %.1fs", error, backoff)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)
            try:
                batch = await probe()
            except ConsumerClosedError:
                return None
            except Exception as exc:
                error = exc
                continue
            self._set_health(True)
            logger.info("consuming works again")
            return batch[0] if batch else _RECOVERED
