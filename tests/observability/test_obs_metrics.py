"""`PrometheusMiddleware`, the queue depth collector and the `/metrics` endpoint."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from _obs_helpers import declare, in_memory_app, make_router, run_worker
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from repid import Job
from repid.observability.metrics import PrometheusMiddleware, serve_metrics


async def _http_get(port: int, path: str, method: str = "GET") -> tuple[int, dict[str, str], str]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"{method} {path} HTTP/1.1\r\nHost: test\r\n\r\n".encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), timeout=5)
    writer.close()
    await writer.wait_closed()
    head, _, body = raw.decode().partition("\r\n\r\n")
    status_line, *header_lines = head.split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    return int(status_line.split()[1]), headers, body


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
async def metrics_port(registry: CollectorRegistry) -> AsyncIterator[int]:
    server = await serve_metrics("127.0.0.1", 0, registry=registry)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_counters_by_outcome(registry: CollectorRegistry) -> None:
    router = make_router()
    middleware = PrometheusMiddleware(registry)
    async with in_memory_app(middleware):
        await declare(router)
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await Job("add", args={"a": 3, "b": 4}).enqueue()
        await Job("explode", retries=1).enqueue()
        await Job("add", args={"a": "x"}).enqueue()
        await run_worker(router, 5)

    def value(name: str, actor: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, {"queue": "default", "actor": actor, **labels})

    assert value("repid_jobs_enqueued_total", "add") == 3
    assert value("repid_jobs_started_total", "add") == 2
    assert value("repid_jobs_succeeded_total", "add") == 2
    assert value("repid_jobs_started_total", "explode") == 2
    assert value("repid_jobs_failed_total", "explode") == 2
    assert value("repid_jobs_retried_total", "explode") == 1
    assert value("repid_jobs_dead_lettered_total", "explode", reason="exception") == 1
    assert value("repid_jobs_dead_lettered_total", "add", reason="validation_error") == 1
    assert value("repid_jobs_failed_total", "add") in (None, 0)
    assert value("repid_jobs_in_flight", "add") == 0
    assert value("repid_jobs_in_flight", "explode") == 0
    assert value("repid_actor_duration_seconds_count", "add", outcome="succeeded") == 2
    assert value("repid_actor_duration_seconds_count", "explode", outcome="retried") == 1


async def test_in_flight_while_the_actor_runs(registry: CollectorRegistry) -> None:
    seen: list[float | None] = []
    labels = {"queue": "default", "actor": "add"}
    router = make_router(
        on_run=lambda: seen.append(registry.get_sample_value("repid_jobs_in_flight", labels))
    )
    async with in_memory_app(PrometheusMiddleware(registry)):
        await declare(router)
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, 1)
    assert seen == [1]
    assert registry.get_sample_value("repid_jobs_in_flight", labels) == 0


async def test_scrape_over_http_with_queue_depth(
    registry: CollectorRegistry, metrics_port: int
) -> None:
    router = make_router()
    middleware = PrometheusMiddleware(registry, namespace="jobs")
    async with in_memory_app(middleware) as app:
        middleware.track_queue_depth(app.connection)
        await declare(router)
        for _ in range(3):
            await Job("add", args={"a": 1, "b": 2}).enqueue()
        await Job("explode").enqueue()

        status, headers, body = await _http_get(metrics_port, "/metrics")
        assert status == 200
        assert headers["content-type"].startswith("text/plain")
        before = _samples(body)
        ready = frozenset({("queue", "default"), ("state", "ready")})
        assert before["jobs_queue_depth", ready] == 4

        await run_worker(router, 4)
        _, _, body = await _http_get(metrics_port, "/metrics")
    after = _samples(body)
    depth = {
        dict(labels)["state"]: value
        for (name, labels), value in after.items()
        if name == "jobs_queue_depth"
    }
    assert depth == {"ready": 0, "delayed": 0, "in_flight": 0, "dead": 1}
    succeeded = frozenset({("queue", "default"), ("actor", "add")})
    assert after["jobs_jobs_succeeded_total", succeeded] == 3


async def test_endpoint_answers_only_its_path(metrics_port: int) -> None:
    status, _, _ = await _http_get(metrics_port, "/other")
    assert status == 404
    status, _, _ = await _http_get(metrics_port, "/metrics", method="POST")
    assert status == 405
    status, headers, body = await _http_get(metrics_port, "/metrics?x=1", method="HEAD")
    assert status == 200
    assert body == ""
    assert int(headers["content-length"]) >= 0


async def test_queue_depth_is_empty_for_brokers_without_counts(registry: CollectorRegistry) -> None:
    middleware = PrometheusMiddleware(registry)
    middleware.track_queue_depth(object())
    middleware.track_queue_depth(object(), queues=["default"])  # replaces, no duplicate error
    assert registry.get_sample_value("repid_queue_depth", {"queue": "default"}) is None


def test_a_second_middleware_on_one_registry_is_refused(registry: CollectorRegistry) -> None:
    PrometheusMiddleware(registry)
    with pytest.raises(ValueError, match="Duplicated"):
        PrometheusMiddleware(registry)


async def test_worker_serves_metrics_on_its_health_check_port(registry: CollectorRegistry) -> None:
    """One port answers the probe and the scrape: `/metrics` next to `/healthz`."""
    from repid import HealthCheckServerSettings, Worker

    ran = asyncio.Event()
    router = make_router(on_run=ran.set)
    middleware = PrometheusMiddleware(registry)
    async with in_memory_app(middleware):
        await declare(router)
        worker = Worker(
            routers=[router],
            handle_signals=[],
            run_health_check_server=True,
            health_check_server_settings=HealthCheckServerSettings(address="127.0.0.1", port=0),
        )
        task = asyncio.create_task(worker.run())
        try:
            await Job("add", args={"a": 1, "b": 2}).enqueue()
            await asyncio.wait_for(ran.wait(), 5)
            port = worker.health_check_port
            assert port is not None

            async def succeeded() -> float:
                status, headers, body = await _http_get(port, "/metrics")
                assert status == 200
                assert headers["content-type"].startswith("text/plain; version=")
                key = (
                    "repid_jobs_succeeded_total",
                    frozenset({("queue", "default"), ("actor", "add")}),
                )
                return _samples(body).get(key, 0.0)

            deadline = asyncio.get_running_loop().time() + 5
            while await succeeded() != 1.0:
                assert asyncio.get_running_loop().time() < deadline, "success never counted"
                await asyncio.sleep(0.01)
            status, _, body = await _http_get(port, "/healthz")
            assert (status, body) == (200, "OK")
            status, _, _ = await _http_get(port, "/metrics", method="POST")
            assert status == 405
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
        assert worker.health_check_port is None


async def test_queue_depth_of_a_broker_that_counts_asynchronously(
    registry: CollectorRegistry,
) -> None:
    """Network brokers count with a round trip: a scrape shows the counts read after the last."""
    from repid.observability.metrics import QueueDepthCollector

    class CountsOverTheNetwork:
        def __init__(self) -> None:
            self.ready = 3

        async def queue_names(self) -> list[str]:
            await asyncio.sleep(0)
            return ["orders"]

        async def counts(self, queue: str) -> dict[str, int]:
            await asyncio.sleep(0)
            return {"ready": self.ready, "dead": 1}

    broker = CountsOverTheNetwork()
    registry.register(QueueDepthCollector(broker))

    def depth(state: str) -> float | None:
        return registry.get_sample_value("repid_queue_depth", {"queue": "orders", "state": state})

    assert depth("ready") is None  # first scrape: nothing read yet, a refresh starts
    deadline = asyncio.get_running_loop().time() + 5
    while depth("ready") != 3:
        assert asyncio.get_running_loop().time() < deadline, "the counts were never refreshed"
        await asyncio.sleep(0.01)
    assert depth("dead") == 1
    broker.ready = 5
    while depth("ready") != 5:
        assert asyncio.get_running_loop().time() < deadline, "the counts were not refreshed again"
        await asyncio.sleep(0.01)
