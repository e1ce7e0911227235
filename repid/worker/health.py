"""The worker's health: the HTTP health-check server (and the routes middlewares add to it, such
as `/metrics`), UNHEALTHY while the broker cannot be consumed from or does not answer `ping()`."""

from __future__ import annotations

import asyncio
import contextlib

from repid.brokers.base import SupportsLiveness, liveness_of
from repid.worker.state import RunnerState, logger

LIVENESS_INTERVAL = 0.5
"""Seconds between two `ping()`s of a broker that answers them, while it is reachable."""
LIVENESS_TIMEOUT = 2.0
"""A `ping()` that takes longer counts as unreachable."""
MAX_LIVENESS_BACKOFF = 5.0
"""While the broker is unreachable, pings (and their log lines) back off up to this interval."""


class Health(RunnerState):
    """Starts the health-check server when the worker asks for one, and sets its status."""

    _consuming_ok = True
    """No lane is in a consuming outage (see `repid.worker.outage`)."""
    _reachable = True
    """The broker's last `ping()` answered (always True for brokers without `liveness`)."""

    async def _start_health_check(self) -> None:
        if not self.worker.run_health_check_server:
            return
        from repid.health_check_server import HealthCheckServer

        self._health = HealthCheckServer(self.worker.health_check_server_settings)
        for middleware in self.connection.middleware.middlewares:
            routes = getattr(middleware, "http_routes", None)
            if routes is not None:
                for path, handler in routes().items():
                    self._health.add_route(path, handler)
        await self._health.start()

    def _set_health(self, healthy: bool) -> None:
        """Record whether consuming works; the status is OK only if the broker is reachable too."""
        self._consuming_ok = healthy
        self._publish_health()

    def _publish_health(self) -> None:
        healthy = self._consuming_ok and self._reachable
        self.healthy = healthy
        if self._health is not None:
            from repid.health_check_server import HealthCheckStatus

            self._health.set_health_check_status(
                HealthCheckStatus.OK if healthy else HealthCheckStatus.UNHEALTHY
            )

    def _start_liveness_watch(self) -> list[asyncio.Task[None]]:
        """A task pinging the broker, when it declares `liveness` (none otherwise)."""
        pinger = liveness_of(self.broker)
        if pinger is None:
            return []
        return [asyncio.create_task(self._watch_liveness(pinger), name="repid-liveness")]

    async def _watch_liveness(self, pinger: SupportsLiveness) -> None:
        """Ping the broker; log an outage once per backoff step, UNHEALTHY until it answers."""
        backoff = LIVENESS_INTERVAL
        # The loop also ends when the worker stops: a client library's ping may swallow the
        # cancellation meant for this task (seen with aiormq and nats-py while connecting).
        while not self._stop.is_set():
            error: BaseException | None = None
            try:
                alive = await asyncio.wait_for(pinger.ping(), LIVENESS_TIMEOUT)
            except Exception as exc:  # a failing ping is an unreachable broker
                alive, error = False, exc
            if alive:
                if not self._reachable:
                    logger.info("the broker answers again")
                    self._reachable = True
                    self._publish_health()
                backoff = LIVENESS_INTERVAL
            else:
                if self._reachable:
                    self._reachable = False
                    self._publish_health()
                why = f" ({error!r})" if error is not None else ""
                logger.error("broker unreachable%s; checking again in %.1fs", why, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, MAX_LIVENESS_BACKOFF)
                continue
            await self._pause(LIVENESS_INTERVAL)

    async def _pause(self, seconds: float) -> None:
        """Wait `seconds`, or less if the worker stops meanwhile."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
