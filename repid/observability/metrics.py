"""Prometheus metrics of jobs and queues, and an asyncio endpoint that serves them.

Needs the `metrics` extra (`pip install 'repid[metrics]'`, which installs prometheus-client).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from repid.data import Parameters, RoutingKey
from repid.observability._lifecycle import JobLifecycleMiddleware, JobRun, Outcome

__all__ = [
    "DEFAULT_BUCKETS",
    "OTHER_LABEL",
    "UNKNOWN_ACTOR_LABEL",
    "PrometheusMiddleware",
    "QueueDepthCollector",
    "serve_metrics",
]

logger = logging.getLogger("repid.observability.metrics")

DEFAULT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600)
"""Actor duration buckets in seconds: from quick handlers up to the default 10-minute timeout."""

UNKNOWN_ACTOR_LABEL = "<unknown>"
"""The `actor` label of dead letters whose actor this worker does not have (or cannot read)."""
OTHER_LABEL = "<other>"
"""The label value that stands for every value past `max_label_values` (see below)."""

_FOREIGN_REASONS = frozenset({"unknown_actor", "decode_error"})
"""Dead-letter reasons whose actor name comes from the message alone, not from this worker."""

_LABELS = ("queue", "actor")
_READ_TIMEOUT = 5.0
_MAX_LINE = 8 * 1024


class _LabelValues:
    """The values one label may take: those vouched for, and at most `limit` others.

    Queue and actor names can come from message content (an envelope names its actor and
    queue), so without a bound a stream of crafted messages grows one series per name.
    """

    __slots__ = ("_warned", "known", "limit", "name", "seen")

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.known: set[str] = set()
        """Names this process itself uses (its actors, the queues it declared): never bounded."""
        self.seen: set[str] = set()
        self._warned = False

    def __call__(self, value: str) -> str:
        if value in self.known or value in self.seen:
            return value
        if len(self.seen) < self.limit:
            self.seen.add(value)
            return value
        if not self._warned:
            self._warned = True
            logger.warning(
                "more than %d distinct %s names in metrics; further ones are labelled %s",
                self.limit,
                self.name,
                OTHER_LABEL,
            )
        return OTHER_LABEL


class PrometheusMiddleware(JobLifecycleMiddleware):
    """Counts jobs and times actors, labelled by queue and actor.

    Metrics (with the default namespace `repid`):

    - `repid_jobs_enqueued_total`, `repid_jobs_started_total`, `repid_jobs_succeeded_total`
    - `repid_jobs_failed_total`: runs whose actor raised or timed out (retried or not)
    - `repid_jobs_retried_total`: runs sent back for another attempt
    - `repid_jobs_dead_lettered_total` (also labelled by `reason`): every dead letter,
      including bad input that never reached an actor
    - `repid_jobs_cancelled_total`, `repid_jobs_snoozed_total`: runs cancelled by
      `Job.cancel()`, and runs that raised `Snooze`
    - `repid_actor_duration_seconds` (histogram, also labelled by `outcome`)
    - `repid_jobs_in_flight` (gauge): actors running now
    - `repid_queue_depth` (gauge, labelled by `queue` and `state`), once `track_queue_depth`
      is called

    Label values are bounded, because a message names its own actor and queue: a dead letter
    whose actor this worker does not have (`unknown_actor`, `decode_error`) is labelled
    `actor="<unknown>"`, and past `max_label_values` distinct queue (or actor) names, further
    ones are labelled `"<other>"` (a warning is logged once). Names this process uses itself —
    the actors it runs, the queues it declares — are always kept.

    Args:
        registry: where the metrics are registered; prometheus-client's global `REGISTRY` by
            default. Create one middleware per registry: a second one raises `ValueError`
            (duplicated time series).
        namespace: prefix of every metric name.
        buckets: bucket bounds of the duration histogram, in seconds.
        max_label_values: distinct queue names, and distinct actor names, kept as label
            values besides the ones this process uses itself.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        namespace: str = "repid",
        buckets: Sequence[float] = DEFAULT_BUCKETS,
        max_label_values: int = 100,
    ) -> None:
        super().__init__()
        if max_label_values < 0:
            raise ValueError(f"max_label_values must be >= 0, got {max_label_values}")
        self._queue_label = _LabelValues("queue", max_label_values)
        self._actor_label = _LabelValues("actor", max_label_values)
        self.registry = registry if registry is not None else REGISTRY
        self.namespace = namespace
        common: dict[str, Any] = {"namespace": namespace, "registry": self.registry}
        self.enqueued = Counter("jobs_enqueued", "Messages enqueued.", _LABELS, **common)
        self.started = Counter("jobs_started", "Actor runs started.", _LABELS, **common)
        self.succeeded = Counter("jobs_succeeded", "Actor runs that succeeded.", _LABELS, **common)
        self.failed = Counter(
            "jobs_failed", "Actor runs that raised or timed out.", _LABELS, **common
        )
        self.retried = Counter(
            "jobs_retried", "Failed runs sent back for another attempt.", _LABELS, **common
        )
        self.dead_lettered = Counter(
            "jobs_dead_lettered",
            "Messages moved to the dead letters.",
            (*_LABELS, "reason"),
            **common,
        )
        self.cancelled = Counter(
            "jobs_cancelled", "Actor runs cancelled while running.", _LABELS, **common
        )
        self.snoozed = Counter("jobs_snoozed", "Actor runs that snoozed.", _LABELS, **common)
        self.duration = Histogram(
            "actor_duration_seconds",
            "Time actors ran, by outcome.",
            (*_LABELS, "outcome"),
            buckets=buckets,
            **common,
        )
        self.in_flight = Gauge("jobs_in_flight", "Actors running now.", _LABELS, **common)
        self._depth_collector: QueueDepthCollector | None = None

    def track_queue_depth(self, broker: Any, queues: Iterable[str] | None = None) -> None:
        """Export `<namespace>_queue_depth` read from `broker` at every scrape.

        Works with brokers that have a `counts(queue)` method (every repid broker that can
        count; see `QueueDepthCollector` for how network brokers are read); for others nothing
        is exported. Calling it again replaces the tracked broker.

        Args:
            broker: a message broker, or a `Connection` (its message broker is used).
            queues: queue names to report; all the broker's queues (`queue_names()`) if None.
        """
        broker = getattr(broker, "raw_message_broker", broker)
        collector = QueueDepthCollector(broker, queues, namespace=self.namespace)
        if self._depth_collector is not None:
            self.registry.unregister(self._depth_collector)
        self.registry.register(collector)
        self._depth_collector = collector

    def http_routes(self) -> dict[str, Callable[[], tuple[str, bytes]]]:
        """`{"/metrics": handler}`: what a worker's health check server serves for this middleware.

        A `Worker(run_health_check_server=True)` whose connection uses this middleware answers
        `GET /metrics` on the health check port, so one port serves the probe and the scrape.
        """
        registry = self.registry

        def render() -> tuple[str, bytes]:
            return CONTENT_TYPE_LATEST, generate_latest(registry)

        return {"/metrics": render}

    # -- label values -------------------------------------------------------------------------

    def before_actor_run(self, delivery: Any, parameters: Parameters, actor: Any = None) -> None:
        if actor is not None:  # the worker's own actor: its name and queue are trusted
            self._actor_label.known.add(actor.name)
            self._queue_label.known.add(actor.queue)
        super().before_actor_run(delivery, parameters)

    def after_queue_declare(self, queue_name: str, exception: BaseException | None = None) -> None:
        if exception is None:
            self._queue_label.known.add(queue_name)

    def _labels(self, queue: str, actor: str) -> tuple[str, str]:
        return self._queue_label(queue), self._actor_label(actor)

    def _run_labels(self, run: JobRun) -> tuple[str, str]:
        if isinstance(run.state, tuple):  # chosen when it started: the in-flight gauge balances
            return run.state
        if run.started is None and run.dead_letter_reason in _FOREIGN_REASONS:
            return self._queue_label(run.queue), UNKNOWN_ACTOR_LABEL
        labels = self._labels(run.queue, run.actor)
        if run.started is not None:
            run.state = labels
        return labels

    # -- lifecycle ----------------------------------------------------------------------------

    def job_enqueued(self, key: RoutingKey, params: Parameters | None) -> None:
        self.enqueued.labels(*self._labels(key.queue, key.topic)).inc()

    def job_started(self, run: JobRun) -> None:
        labels = self._run_labels(run)
        self.started.labels(*labels).inc()
        self.in_flight.labels(*labels).inc()

    def job_ran(self, run: JobRun) -> None:
        self.in_flight.labels(*self._run_labels(run)).dec()

    def job_finished(self, run: JobRun) -> None:
        queue, actor = self._run_labels(run)
        if run.outcome is Outcome.SUCCEEDED:
            self.succeeded.labels(queue, actor).inc()
        elif run.outcome is Outcome.RETRIED:
            self.retried.labels(queue, actor).inc()
        elif run.outcome is Outcome.DEAD_LETTERED:
            reason = run.dead_letter_reason or "unknown"
            self.dead_lettered.labels(queue, actor, reason).inc()
        elif run.outcome is Outcome.CANCELLED:
            self.cancelled.labels(queue, actor).inc()
        elif run.outcome is Outcome.SNOOZED:
            self.snoozed.labels(queue, actor).inc()
        if run.failed:
            self.failed.labels(queue, actor).inc()
        if run.duration is not None and run.outcome is not None:
            self.duration.labels(queue, actor, run.outcome.value).observe(run.duration)


class QueueDepthCollector(Collector):
    """A collector that reads message counts from a broker at scrape time.

    Exports `<namespace>_queue_depth{queue, state}` with the states the broker reports (ready,
    delayed, in_flight, dead). Brokers without `counts()` export nothing. A broker that raises
    is logged and skipped for that scrape.

    Network brokers count with a round trip (`async def counts`), which a scrape cannot wait for
    inside the event loop: each scrape then exports the counts read after the previous scrape
    and starts a refresh in the background, so the figures are at most one scrape interval old
    (the first scrape exports none).
    """

    def __init__(
        self, broker: Any, queues: Iterable[str] | None = None, *, namespace: str = "repid"
    ) -> None:
        self.broker = broker
        self.queues = None if queues is None else list(queues)
        self.name = f"{namespace}_queue_depth" if namespace else "queue_depth"
        self._cached: dict[str, dict[str, int]] = {}
        self._refreshing: asyncio.Task[None] | None = None

    def describe(self) -> Iterable[GaugeMetricFamily]:
        return [self._family()]

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            self.name, "Messages in a queue, by state.", labels=["queue", "state"]
        )

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = self._family()
        counts: Callable[[str], Any] | None = getattr(self.broker, "counts", None)
        if counts is not None:
            if inspect.iscoroutinefunction(counts):
                self._refresh_soon()
                for queue, by_state in sorted(self._cached.items()):
                    for state, value in by_state.items():
                        family.add_metric([queue, state], value)
            else:
                for queue in self._queue_names_now():
                    try:
                        by_state = counts(queue)
                    except Exception:
                        logger.exception("reading the depth of queue %r failed", queue)
                        continue
                    for state, value in by_state.items():
                        family.add_metric([queue, state], value)
        yield family

    def _queue_names_now(self) -> list[str]:
        if self.queues is not None:
            return self.queues
        names = getattr(self.broker, "queue_names", None)
        return list(names()) if callable(names) else []

    def _refresh_soon(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # scraped from another thread: no loop to read the broker with
            return
        self._refreshing = loop.create_task(self._refresh(), name="repid-queue-depth")

    async def _refresh(self) -> None:
        queues: Iterable[str] | None = self.queues
        if queues is None:
            names = getattr(self.broker, "queue_names", None)
            if names is None:
                return
            found = names()
            queues = await found if inspect.isawaitable(found) else found
        fresh: dict[str, dict[str, int]] = {}
        for queue in queues or ():
            try:
                fresh[queue] = dict(await self.broker.counts(queue))
            except Exception:
                logger.exception("reading the depth of queue %r failed", queue)
        self._cached = fresh


async def serve_metrics(
    address: str = "127.0.0.1",
    port: int = 9464,
    *,
    registry: CollectorRegistry | None = None,
    path: str = "/metrics",
) -> asyncio.Server:
    """Serve the Prometheus text format on `http://<address>:<port><path>` from the event loop.

    Collection runs in the event loop, so collectors (like `QueueDepthCollector` on the
    in-memory broker) read state without locks. Close the returned server to stop it
    (`server.close(); await server.wait_closed()`, or `async with server:`).

    Only this machine can scrape it by default; bind `"0.0.0.0"` (all interfaces) or a
    specific address for a Prometheus server elsewhere, on a network you trust: the metrics
    name your queues and actors and there is no authentication.

    Args:
        address: interface to bind (default `127.0.0.1`, the loopback interface only).
        port: TCP port; 0 picks a free one (`server.sockets[0].getsockname()[1]`).
        registry: what to expose; prometheus-client's global `REGISTRY` by default.
        path: the path that answers; others get 404.

    Raises:
        OSError: the address could not be bound.
    """
    source = registry if registry is not None else REGISTRY

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_READ_TIMEOUT):
                request_line = await reader.readline()
                while (await reader.readline()).strip():  # headers: not needed
                    pass
            parts = request_line.decode("latin-1").split()
            method, target = (parts[0], parts[1]) if len(parts) == 3 else ("", "")
            if target.partition("?")[0] != path:
                status, content_type, body = "404 Not Found", "text/plain", b"Not Found"
            elif method not in ("GET", "HEAD"):
                status, content_type, body = "405 Method Not Allowed", "text/plain", b""
            else:
                status, content_type, body = "200 OK", CONTENT_TYPE_LATEST, generate_latest(source)
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode("ascii")
            writer.write(head if method == "HEAD" else head + body)
            await writer.drain()
        except (TimeoutError, ConnectionError, ValueError):
            logger.debug("metrics request failed", exc_info=True)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    return await asyncio.start_server(handle, address, port, limit=_MAX_LINE)
