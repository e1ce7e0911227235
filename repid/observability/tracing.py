"""OpenTelemetry tracing: a PRODUCER span per enqueue, a CONSUMER span per actor run.

Needs the `otel` extra (`pip install 'repid[otel]'`). The trace context travels in the message
headers (W3C `traceparent` with the default propagator), so a run is a child of its enqueue.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Mapping
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from repid.data import Parameters, RoutingKey
from repid.middlewares import MiddlewareDispatcher
from repid.observability._lifecycle import JobLifecycleMiddleware, JobRun, Outcome

__all__ = ["OpenTelemetryMiddleware", "install"]

_MAX_PENDING_SENDS = 10_000
"""A safety net, not the normal path: a producer span whose enqueue raised is ended at once
(`after_enqueue` with `exception=`), but one whose message never reached the broker call (the
args bucket could not be stored, a later header provider raised, the enqueue was cancelled)
gets no event at all. Past this many pending, the oldest is ended as incomplete."""

_SYSTEM = "repid"


class _RunSpan:
    __slots__ = ("span", "task", "token")

    def __init__(
        self,
        span: Span,
        token: contextvars.Token[otel_context.Context] | None,
        task: asyncio.Task[Any] | None,
    ) -> None:
        self.span = span
        self.token = token
        self.task = task


class OpenTelemetryMiddleware(JobLifecycleMiddleware):
    """Creates messaging spans for enqueues and actor runs.

    - `send <queue>` (kind PRODUCER) is started by `inject_headers` when a job builds its
      message, so the injected context is the producer span's own, and ended when the broker
      call returns (`after_enqueue`): with status ERROR and the exception if it raised.
    - `process <queue>` (kind CONSUMER) covers one actor run; its parent is the context
      extracted from the message headers. It is the current span while the actor runs (async
      or in a thread), so spans the actor creates are its children, and it ends when the
      message is settled. Its status is ERROR when the run failed (retried, dead-lettered,
      failed), with the exception recorded.

    Attributes follow the OpenTelemetry messaging conventions (`messaging.system` = "repid",
    `messaging.destination.name` = queue, `messaging.message.id`, `messaging.operation.type`),
    plus `repid.actor`, `repid.attempt` and `repid.outcome`.

    Use `install(app)` rather than adding it by hand: both halves (middleware and header
    provider) are needed.

    Args:
        tracer_provider: the provider to take the tracer from; the global one by default.
    """

    def __init__(self, tracer_provider: trace.TracerProvider | None = None) -> None:
        super().__init__()
        from repid import __version__

        self.tracer = trace.get_tracer("repid", __version__, tracer_provider=tracer_provider)
        self._sends: dict[int, Span] = {}

    # -- producer -----------------------------------------------------------------------------

    def inject_headers(self) -> dict[str, str]:
        """A `Connection.header_providers` entry: start the producer span, return its context.

        The queue is not known yet at this point; the span is named when the enqueue completes.
        """
        span = self.tracer.start_span(
            "send",
            kind=SpanKind.PRODUCER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "send",
                "messaging.operation.name": "send",
            },
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        if span.is_recording():
            if len(self._sends) >= _MAX_PENDING_SENDS:
                stale = self._sends.pop(next(iter(self._sends)))
                stale.set_status(Status(StatusCode.ERROR, "the enqueue did not complete"))
                stale.end()
            self._sends[span.get_span_context().span_id] = span
        return carrier

    def job_enqueued(self, key: RoutingKey, params: Parameters | None) -> None:
        self._end_send(key, params, None)

    def job_enqueue_failed(
        self, key: RoutingKey, params: Parameters | None, exception: BaseException
    ) -> None:
        self._end_send(key, params, exception)

    def _end_send(
        self, key: RoutingKey, params: Parameters | None, exception: BaseException | None
    ) -> None:
        headers = params.headers if params is not None else None
        if not headers:
            return
        span_context = trace.get_current_span(propagate.extract(headers)).get_span_context()
        span = self._sends.pop(span_context.span_id, None)
        if span is None:
            return
        span.update_name(f"send {key.queue}")
        span.set_attributes(
            {
                "messaging.destination.name": key.queue,
                "messaging.message.id": key.id_,
                "repid.actor": key.topic,
            }
        )
        if exception is not None:
            span.record_exception(exception)
            span.set_attribute("error.type", type(exception).__name__)
            span.set_status(Status(StatusCode.ERROR, f"{type(exception).__name__}: {exception}"))
        span.end()

    # -- consumer -----------------------------------------------------------------------------

    def _start_process_span(self, run: JobRun) -> Span:
        return self.tracer.start_span(
            f"process {run.queue}",
            context=_parent(run.headers),
            kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": _SYSTEM,
                "messaging.operation.type": "process",
                "messaging.operation.name": "process",
                "messaging.destination.name": run.queue,
                "messaging.message.id": run.job_id,
                "repid.actor": run.actor,
                "repid.attempt": run.attempt,
            },
        )

    def job_started(self, run: JobRun) -> None:
        span = self._start_process_span(run)
        token = otel_context.attach(trace.set_span_in_context(span))
        run.state = _RunSpan(span, token, _current_task())

    def job_ran(self, run: JobRun) -> None:
        # The run's context was attached in the task that runs the actor, and `after_actor_run`
        # comes from that task; a detach anywhere else would raise inside OpenTelemetry.
        state = run.state if isinstance(run.state, _RunSpan) else None
        if state is not None and state.token is not None and state.task is _current_task():
            otel_context.detach(state.token)
            state.token = None

    def job_finished(self, run: JobRun) -> None:
        assert run.outcome is not None
        state = run.state if isinstance(run.state, _RunSpan) else None
        # A message settled without its actor running (bad input): a zero-length span keeps
        # the failure visible in the producer's trace.
        span = state.span if state is not None else self._start_process_span(run)
        span.set_attribute("repid.outcome", run.outcome.value)
        if run.dead_letter_reason is not None:
            span.set_attribute("repid.dead_letter_reason", run.dead_letter_reason)
        if run.outcome in (Outcome.RETRIED, Outcome.FAILED, Outcome.DEAD_LETTERED):
            if run.exception is not None:
                span.record_exception(run.exception)
            elif run.error_type is not None:
                attributes = {"exception.type": run.error_type}
                if run.error_message is not None:
                    attributes["exception.message"] = run.error_message
                if run.traceback is not None:
                    attributes["exception.stacktrace"] = run.traceback
                span.add_event("exception", attributes)
            if run.error_type is not None:
                span.set_attribute("error.type", run.error_type)
            description = f"{run.error_type}: {run.error_message}" if run.error_type else None
            span.set_status(Status(StatusCode.ERROR, description or run.outcome.value))
        span.end()


def _current_task() -> asyncio.Task[Any] | None:
    try:
        return asyncio.current_task()
    except RuntimeError:  # no running loop (a settlement from a worker thread)
        return None


def _parent(headers: Mapping[str, str] | None) -> otel_context.Context:
    # An empty context (not the current one): a run's parent is its message, not whatever
    # happens to be current in the worker.
    return propagate.extract(headers or {}, context=otel_context.Context())


def install(
    target: Any, *, tracer_provider: trace.TracerProvider | None = None
) -> OpenTelemetryMiddleware:
    """Trace the enqueues and actor runs of a `Repid` app or a `Connection`.

    Adds an `OpenTelemetryMiddleware` to the connection (unless it already has one) and
    registers its `inject_headers` as a header provider. Idempotent. Call it in producers and
    in workers, before enqueuing or running.

    Args:
        target: a `Repid` app or a `Connection`.
        tracer_provider: used when a middleware is created; the global provider by default.

    Returns:
        The middleware in use.
    """
    connection = getattr(target, "connection", target)
    dispatcher: MiddlewareDispatcher = connection.middleware
    middleware = next(
        (m for m in dispatcher.middlewares if isinstance(m, OpenTelemetryMiddleware)), None
    )
    if middleware is None:
        middleware = OpenTelemetryMiddleware(tracer_provider)
        connection.use_middlewares(MiddlewareDispatcher([*dispatcher.middlewares, middleware]))
        app_middlewares = getattr(target, "middlewares", None)
        if target is not connection and isinstance(app_middlewares, list):
            app_middlewares.append(middleware)
    if middleware.inject_headers not in connection.header_providers:
        connection.header_providers.append(middleware.inject_headers)
    return middleware
