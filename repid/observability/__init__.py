"""Observability of jobs: structured logs, Prometheus metrics and OpenTelemetry traces.

Each is a middleware: `Repid(connection, middlewares=[...])`. Logging needs nothing extra;
`repid.observability.metrics` needs the `metrics` extra and `repid.observability.tracing`
the `otel` extra, so they are imported from their own modules.
"""

from __future__ import annotations

from repid.observability._lifecycle import JobLifecycleMiddleware, JobRun, Outcome
from repid.observability.logging import JOB_FIELDS, JobLogMiddleware

__all__ = ["JOB_FIELDS", "JobLifecycleMiddleware", "JobLogMiddleware", "JobRun", "Outcome"]
