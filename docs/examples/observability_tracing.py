import asyncio

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from repid import Connection, InMemoryMessageBroker, Job, Repid, Router, Worker
from repid.observability.tracing import install

# In production: a BatchSpanProcessor with an OTLP exporter, set as the global provider with
# `trace.set_tracer_provider(provider)`; then `install(app)` needs no `tracer_provider`.
exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("shop")

router = Router()


@router.actor
def render_invoice(order_id: int) -> str:  # a sync actor: it runs in a thread
    with tracer.start_as_current_span("render pdf"):  # a child of the run's span
        return f"invoice-{order_id}.pdf"


async def main() -> None:
    app = Repid(Connection(InMemoryMessageBroker()))
    install(app, tracer_provider=provider)  # in producers and in workers
    async with app.magic(auto_disconnect=True):
        worker = Worker(routers=[router], messages_limit=1)
        await worker.declare_all_queues()
        with tracer.start_as_current_span("checkout"):
            await Job("render_invoice", args={"order_id": 7}).enqueue()
        await worker.run()

    spans = sorted(exporter.get_finished_spans(), key=lambda span: span.start_time or 0)
    names = {span.context.span_id: span.name for span in spans}
    for span in spans:
        parent = names[span.parent.span_id] if span.parent is not None else None
        print(f"{span.name}: " + (f"parent is {parent}" if parent else "root"))
    print("one trace:", len({span.context.trace_id for span in spans}) == 1)


if __name__ == "__main__":
    asyncio.run(main())
