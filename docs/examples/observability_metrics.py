import asyncio
from urllib.request import urlopen

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from repid import Connection, InMemoryMessageBroker, Job, Repid, Router, Worker
from repid.observability.metrics import PrometheusMiddleware, serve_metrics

router = Router()


@router.actor
async def add(a: int, b: int) -> int:
    return a + b


@router.actor
async def charge(order_id: int) -> None:
    raise ValueError(f"card declined for order {order_id}")


def scrape(url: str) -> list[Sample]:
    """Read the endpoint as Prometheus would."""
    with urlopen(url, timeout=5) as response:
        text = response.read().decode()
    return [sample for family in text_string_to_metric_families(text) for sample in family.samples]


def show(samples: list[Sample], name: str, **labels: str) -> None:
    (value,) = [s.value for s in samples if s.name == name and labels.items() <= s.labels.items()]
    selector = ",".join(f'{key}="{label}"' for key, label in labels.items())
    print(f"{name}{{{selector}}} {value:g}")


async def main() -> None:
    registry = CollectorRegistry()  # or leave it out: prometheus-client's global registry
    metrics = PrometheusMiddleware(registry)
    app = Repid(Connection(InMemoryMessageBroker()), middlewares=[metrics])
    metrics.track_queue_depth(app.connection)
    async with app.magic(auto_disconnect=True):
        worker = Worker(routers=[router], messages_limit=3)
        await worker.declare_all_queues()
        for a in range(2):
            await Job("add", args={"a": a, "b": 2}).enqueue()
        await Job("charge", args={"order_id": 7}).enqueue()
        # A fixed port (9464 is the default) in production; 0 picks a free one here.
        async with await serve_metrics("127.0.0.1", 0, registry=registry) as server:
            port = server.sockets[0].getsockname()[1]
            await worker.run()  # the endpoint answers while the worker runs
            url = f"http://127.0.0.1:{port}/metrics"
            samples = await asyncio.to_thread(scrape, url)

    show(samples, "repid_jobs_succeeded_total", actor="add")
    show(samples, "repid_jobs_dead_lettered_total", actor="charge", reason="exception")
    show(samples, "repid_actor_duration_seconds_count", actor="add", outcome="succeeded")
    show(samples, "repid_queue_depth", state="dead")


if __name__ == "__main__":
    asyncio.run(main())
