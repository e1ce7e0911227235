"""What the metrics expose, and to whom: bounded label values, the loopback interface by default."""

from __future__ import annotations

import asyncio

import pytest
from _obs_helpers import declare, in_memory_app, make_router, run_worker
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from repid import InMemoryMessageBroker, Job, Repid
from repid.codec import encode_message
from repid.data import Parameters, RoutingKey
from repid.observability.metrics import (
    OTHER_LABEL,
    UNKNOWN_ACTOR_LABEL,
    PrometheusMiddleware,
    serve_metrics,
)

MESSAGES = 2_000


def series(registry: CollectorRegistry, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {
        frozenset(sample.labels.items()): sample.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for sample in family.samples
        if sample.name == name
    }


async def test_messages_for_actors_this_worker_lacks_share_one_series() -> None:
    registry = CollectorRegistry()
    router = make_router()
    async with in_memory_app(PrometheusMiddleware(registry)):
        await declare(router)
        broker = Repid.get_magic_connection().raw_message_broker
        assert isinstance(broker, InMemoryMessageBroker)
        for n in range(MESSAGES):  # raw envelopes, as a foreign producer would write them
            key = RoutingKey(f"id-{n}", f"no_such_actor_{n}", "default")
            broker.inject_raw("default", encode_message(key, "{}", Parameters()))
        broker.inject_raw("default", b"not an envelope")
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, MESSAGES + 2)

    dead = series(registry, "repid_jobs_dead_lettered_total")
    unknown = {("queue", "default"), ("actor", UNKNOWN_ACTOR_LABEL)}
    assert dead == {
        frozenset({*unknown, ("reason", "unknown_actor")}): MESSAGES,
        frozenset({*unknown, ("reason", "decode_error")}): 1,
    }
    succeeded = series(registry, "repid_jobs_succeeded_total")
    assert succeeded == {frozenset({("queue", "default"), ("actor", "add")}): 1}
    assert len(generate_latest(registry)) < 20_000  # was 450 KB: one series per message


async def test_distinct_names_past_the_limit_are_labelled_other(
    caplog: pytest.LogCaptureFixture,
) -> None:
    registry = CollectorRegistry()
    middleware = PrometheusMiddleware(registry, max_label_values=5)
    async with in_memory_app(middleware):
        broker = Repid.get_magic_connection().raw_message_broker
        for n in range(20):  # declared elsewhere (a deploy step): not vouched for here
            await broker.queue_declare(f"q{n}")
        for n in range(20):
            await Job(f"actor_{n}", queue=f"q{n}").enqueue()
    enqueued = series(registry, "repid_jobs_enqueued_total")
    assert len(enqueued) == 6
    assert enqueued[frozenset({("queue", OTHER_LABEL), ("actor", OTHER_LABEL)})] == 15
    assert enqueued[frozenset({("queue", "q0"), ("actor", "actor_0")})] == 1
    warnings = [r for r in caplog.records if "distinct" in r.getMessage()]
    assert len(warnings) == 2  # once per label


async def test_the_workers_own_names_are_kept_past_the_limit() -> None:
    registry = CollectorRegistry()
    router = make_router()
    async with in_memory_app(PrometheusMiddleware(registry, max_label_values=0)):
        await declare(router)  # its queue is declared through the middleware: vouched for
        await Job("add", args={"a": 1, "b": 2}).enqueue()
        await run_worker(router, 1)
        await Job("add", args={"a": 1, "b": 2}).enqueue()
    started = series(registry, "repid_jobs_started_total")
    assert started == {frozenset({("queue", "default"), ("actor", "add")}): 1}
    enqueued = series(registry, "repid_jobs_enqueued_total")
    assert enqueued == {  # before its first run, nothing had vouched for the actor name
        frozenset({("queue", "default"), ("actor", OTHER_LABEL)}): 1,
        frozenset({("queue", "default"), ("actor", "add")}): 1,
    }
    in_flight = series(registry, "repid_jobs_in_flight")
    assert in_flight == {frozenset({("queue", "default"), ("actor", "add")}): 0}


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_label_values"):
        PrometheusMiddleware(CollectorRegistry(), max_label_values=-1)


async def test_serve_metrics_listens_on_the_loopback_interface_by_default() -> None:
    server = await serve_metrics(port=0, registry=CollectorRegistry())
    async with server:
        host, port = server.sockets[0].getsockname()[:2]
        assert host == "127.0.0.1"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n")
        assert (await asyncio.wait_for(reader.readline(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        await writer.wait_closed()


async def test_serve_metrics_binds_the_address_it_is_given() -> None:
    server = await serve_metrics("0.0.0.0", 0, registry=CollectorRegistry())
    async with server:
        assert server.sockets[0].getsockname()[0] == "0.0.0.0"
