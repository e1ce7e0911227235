"""OpenTelemetry: producer and consumer spans linked through the message headers."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from _obs_helpers import declare, in_memory_app, make_router, run_worker
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from repid import Job, MessageDependency, QueueNotDeclaredError, Router
from repid.observability.tracing import OpenTelemetryMiddleware, install


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


def _one(spans: Sequence[ReadableSpan], name: str) -> ReadableSpan:
    found = [s for s in spans if s.name == name]
    assert len(found) == 1, [s.name for s in spans]
    return found[0]


async def test_run_span_is_a_child_of_the_enqueue_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    current_in_actor: list[trace.Span] = []
    router = make_router(on_run=lambda: current_in_actor.append(trace.get_current_span()))
    async with in_memory_app() as app:
        install(app, tracer_provider=provider)
        await declare(router)
        with provider.get_tracer("test").start_as_current_span("request") as request:
            await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, 1)

    spans = exporter.get_finished_spans()
    send = _one(spans, "send default")
    process = _one(spans, "process default")
    assert send.kind is SpanKind.PRODUCER
    assert process.kind is SpanKind.CONSUMER
    request_ctx = request.get_span_context()
    assert send.parent is not None
    assert send.parent.span_id == request_ctx.span_id
    assert process.context.trace_id == send.context.trace_id == request_ctx.trace_id
    assert process.parent is not None
    assert process.parent.span_id == send.context.span_id
    assert process.status.status_code is StatusCode.UNSET
    assert process.attributes is not None
    assert send.attributes is not None
    assert process.attributes["repid.actor"] == "add"
    assert process.attributes["repid.outcome"] == "succeeded"
    assert process.attributes["messaging.message.id"] == send.attributes["messaging.message.id"]
    assert send.attributes["messaging.destination.name"] == "default"
    # The run span is current while the async actor runs, and only then.
    assert current_in_actor[0].get_span_context().span_id == process.context.span_id
    assert not trace.get_current_span().get_span_context().is_valid


async def test_failures_set_error_status_and_record_the_exception(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    router = make_router()
    async with in_memory_app() as app:
        install(app, tracer_provider=provider)
        await declare(router)
        await Job("explode", retries=1).enqueue()
        await Job("add", args={"a": "not a number"}).enqueue()
        await run_worker(router, 3)

    spans = exporter.get_finished_spans()
    runs = {
        (s.attributes["repid.actor"], s.attributes["repid.attempt"]): s
        for s in spans
        if s.kind is SpanKind.CONSUMER and s.attributes is not None
    }
    first, second = runs["explode", 1], runs["explode", 2]
    assert first.attributes is not None
    assert second.attributes is not None
    assert first.attributes["repid.outcome"] == "retried"
    assert second.attributes["repid.outcome"] == "dead_lettered"
    for span in (first, second):
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description is not None
        assert "boom" in span.status.description
        (event,) = [e for e in span.events if e.name == "exception"]
        assert event.attributes is not None
        assert event.attributes["exception.type"] == "ValueError"
    assert first.context.trace_id == second.context.trace_id  # the retry keeps the trace
    invalid = runs["add", 1]
    assert invalid.attributes is not None
    assert invalid.status.status_code is StatusCode.ERROR
    assert invalid.attributes["repid.dead_letter_reason"] == "validation_error"


async def test_install_is_idempotent_and_reuses_an_existing_middleware(
    provider: TracerProvider,
) -> None:
    existing = OpenTelemetryMiddleware(provider)
    async with in_memory_app(existing) as app:
        assert install(app) is existing
        assert install(app.connection) is existing
        assert app.connection.header_providers == [existing.inject_headers]
    async with in_memory_app() as app:
        added = install(app, tracer_provider=provider)
        assert install(app) is added
        assert app.middlewares == [added]
        assert app.connection.middleware.middlewares == [added]
        assert len(app.connection.header_providers) == 1


async def test_without_a_current_span_each_enqueue_starts_a_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    router = make_router()
    async with in_memory_app() as app:
        install(app, tracer_provider=provider)
        await declare(router)
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, 2)
    spans = exporter.get_finished_spans()
    sends = [s for s in spans if s.kind is SpanKind.PRODUCER]
    assert len(sends) == 2
    assert all(s.parent is None for s in sends)
    assert sends[0].context.trace_id != sends[1].context.trace_id
    for process in (s for s in spans if s.kind is SpanKind.CONSUMER):
        assert process.parent is not None
        assert process.parent.span_id in {s.context.span_id for s in sends}


async def test_a_sync_actor_runs_in_its_span_and_joins_the_producers_trace(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    router = Router()
    tracer = provider.get_tracer("test")

    @router.actor
    def work() -> None:  # runs in the worker's thread pool
        with tracer.start_as_current_span("inside the actor"):
            pass

    async with in_memory_app() as app:
        install(app, tracer_provider=provider)
        await declare(router)
        with tracer.start_as_current_span("request"):
            await Job("work").enqueue()
        await run_worker(router, 1)

    spans = exporter.get_finished_spans()
    send = _one(spans, "send default")
    process = _one(spans, "process default")
    inside = _one(spans, "inside the actor")
    assert inside.parent is not None
    assert inside.parent.span_id == process.context.span_id
    assert inside.context.trace_id == process.context.trace_id == send.context.trace_id


async def test_a_failed_enqueue_ends_its_span_at_once_with_the_error(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    async with in_memory_app() as app:
        middleware = install(app, tracer_provider=provider)
        with pytest.raises(QueueNotDeclaredError) as raised:
            await Job("add", queue="undeclared").enqueue()
        (send,) = exporter.get_finished_spans()  # ended before the error reached the caller
        assert middleware._sends == {}
    assert send.name == "send undeclared"
    assert send.kind is SpanKind.PRODUCER
    assert send.status.status_code is StatusCode.ERROR
    (event,) = send.events
    assert event.name == "exception"
    assert event.attributes is not None
    assert event.attributes["exception.type"] == "repid.errors.QueueNotDeclaredError"
    assert event.attributes["exception.message"] == str(raised.value)
    assert send.attributes is not None
    assert send.attributes["error.type"] == "QueueNotDeclaredError"


async def test_cancelled_and_self_settled_runs(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    started = asyncio.Event()
    router = Router()

    @router.actor
    async def block() -> None:
        started.set()
        await asyncio.Event().wait()

    @router.actor
    async def self_ack(message: MessageDependency) -> None:
        await message.ack()
        with provider.get_tracer("test").start_as_current_span("after the ack"):
            pass

    async with in_memory_app() as app:
        install(app, tracer_provider=provider)
        await declare(router)
        await Job("self_ack").enqueue()
        job = await Job("block").enqueue()
        # 2.0 behaviour: the actor goes on after its ack (1.6's default ends it there).
        worker = asyncio.create_task(run_worker(router, 2, settle_ends_actor=False))
        await started.wait()
        await job.cancel()
        await worker
    assert not trace.get_current_span().get_span_context().is_valid

    spans = exporter.get_finished_spans()
    runs = {
        s.attributes["repid.actor"]: s
        for s in spans
        if s.kind is SpanKind.CONSUMER and s.attributes is not None
    }
    cancelled = runs["block"]
    assert cancelled.attributes is not None
    assert cancelled.attributes["repid.outcome"] == "cancelled"
    assert cancelled.status.status_code is StatusCode.UNSET  # asked for, not a failure
    acked = runs["self_ack"]
    assert acked.attributes is not None
    assert acked.attributes["repid.outcome"] == "succeeded"
    # The run's span stays current until the actor stops, even once the message is settled.
    after = _one(spans, "after the ack")
    assert after.parent is not None
    assert after.parent.span_id == acked.context.span_id
