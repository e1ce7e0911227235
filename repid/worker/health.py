"""The worker's health: the HTTP health-check server (and the routes middlewares add to it, such
as `/metrics`), turned UNHEALTHY while the broker cannot be consumed from."""

from __future__ import annotations

from repid.worker.state import RunnerState


class Health(RunnerState):
    """Starts the health-check server when the worker asks for one, and sets its status."""

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
        self.healthy = healthy
        if self._health is not None:
            from repid.health_check_server import HealthCheckStatus

            self._health.set_health_check_status(
                HealthCheckStatus.OK if healthy else HealthCheckStatus.UNHEALTHY
            )
