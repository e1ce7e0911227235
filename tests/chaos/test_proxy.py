"""C3: the workers' connections dropped mid-run: nothing lost, the workers keep consuming.

The worker processes reach the broker through the test's own TCP proxy on loopback
(`_servers.Proxy`; for Kafka it rewrites the advertised broker port so that every connection
goes through it); the test enqueues directly. While a queue drains, the proxy aborts every
connection at once, a few times (short: 2, full: 5). Afterwards a last batch is enqueued and
must complete too: the workers are still consuming, without anybody restarting them. One job
in 20 (more) always fails: retried once, then dead-lettered, so the workers also publish
(retries, dead letters) while their connections drop; each of those must end up dead-lettered.

Figures: lost (0: every job completed or, for the failing ones, dead-lettered), duplicates,
copies of a dead letter, the connections the proxy dropped and accepted,
`stale_logged` (worker log lines about settlements of deliveries the drop took away),
`logged_tracebacks` (tracebacks logged by handled errors), and `resume_after_drop_*`: from a
drop to the first actor run started after it. A worker that exits, or a crash line in its
log (`_servers.FATAL_MARKERS`), fails the test.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from repid import Job
from tests.chaos._harness import (
    DEFAULT_URLS,
    FULL,
    SERVER_BROKERS,
    BrokerSettings,
    Chaos,
    LedgerView,
    loss_figures,
    percentile,
    record_result,
    size,
    until,
)
from tests.chaos._servers import (
    Proxy,
    fatal_excerpts,
    log_figures,
    settings_url,
    shared_port,
    via_proxy,
)

JOBS = size(600, 5000)
LATE_JOBS = size(50, 200)
"""Enqueued after the last drop: they complete only if the workers still consume."""
DROPS = size(2, 5)
FAIL_EVERY = 20
"""One job in 20 more always fails: it is retried once, then dead-lettered."""
SLEEP = 0.03
WORKERS = 2

pytestmark = pytest.mark.timeout(size(120, 1200))


@pytest.fixture(params=SERVER_BROKERS)
def broker_name(request: pytest.FixtureRequest) -> str:
    """C3 runs on the brokers with a server (SQLite has no connection to drop)."""
    name: str = request.param
    return name


@pytest.fixture
def proxy(broker_settings: BrokerSettings) -> Iterator[Proxy]:
    """A proxy in front of the shared server of the broker under test."""
    name = broker_settings.name
    instance = Proxy(shared_port(name, broker_settings.url), kafka=name == "kafka")
    instance.start()
    try:
        yield instance
    finally:
        instance.close()


def _proxied_url(settings: BrokerSettings, proxy: Proxy) -> str:
    url = settings.url
    if settings.name == "kafka":
        return settings_url("kafka", f"127.0.0.1:{proxy.port}")
    return via_proxy(settings.name, url, proxy.port)


async def test_c3_dropped_connections_lose_nothing_and_workers_keep_consuming(
    broker_settings: BrokerSettings, proxy: Proxy, tmp_path: Path
) -> None:
    assert broker_settings.url == DEFAULT_URLS[broker_settings.name]
    worker_env = {"CHAOS_URL": _proxied_url(broker_settings, proxy)}
    async with Chaos.open(broker_settings, tmp_path, worker_env=worker_env) as chaos:
        ids, failing = await _enqueue_mixed(chaos)
        workers = chaos.pool.start(WORKERS)

        drops: list[float] = []
        dropped = 0
        for index in range(1, DROPS + 1):
            point = index * JOBS // (DROPS + 1)
            await chaos.until(
                _completed(point),
                f"{point} jobs completed (drop {index})",
                timeout=size(60, 300),
            )
            accepted_before = proxy.accepted
            drops.append(time.time())
            dropped += proxy.drop()
            # The workers connect again through the proxy (nobody restarts them).
            await chaos.until(
                _accepted_more(proxy, accepted_before),
                f"a worker to reconnect after drop {index}",
                timeout=30,
            )
            await asyncio.sleep(0.1)  # spacing the drops, not waiting for something

        late = await chaos.enqueue(LATE_JOBS, sleep=SLEEP)
        expected = set(ids) | set(late)
        view = await chaos.until(
            lambda view: view.completed_ids() >= expected,
            "every job (and the late batch) to complete",
            timeout=size(90, 900),
        )
        letters: list[str] = []

        async def all_dead() -> bool:
            letters[:] = [m.key.id_ for m in await chaos.dead_letters()]
            return set(letters) >= set(failing)

        await until(all_dead, "the failing jobs in the dead letters", timeout=size(30, 120))
        view = chaos.ledger.read()
        figures = loss_figures(view, [*ids, *late, *failing], dead=letters)
        resumes = _resume_delays(view, drops)
        figures.update(
            workers=WORKERS,
            drops=len(drops),
            connections_dropped=dropped,
            connections_accepted=proxy.accepted,
            resume_after_drop_p50_s=_round(percentile(resumes, 50)),
            resume_after_drop_max_s=_round(max(resumes, default=None)),
            failing_jobs=len(failing),
            dead_letter_copies=len(letters) - len(set(letters)),
            **log_figures(tmp_path),
        )
        record_result(
            "C3",
            broker_settings.name,
            "full" if FULL else "short",
            figures,
            note="workers through a loopback proxy that aborts every connection at once",
        )
        assert figures["lost"] == 0, figures
        assert all(p.poll() is None for p in workers), "a worker exited\n" + chaos.pool.logs()
        assert not fatal_excerpts(tmp_path), fatal_excerpts(tmp_path)
        assert dropped >= DROPS, "the drops hit no connection: the workers bypass the proxy"


async def _enqueue_mixed(chaos: Chaos) -> tuple[list[str], list[str]]:
    """`JOBS` jobs, one in `FAIL_EVERY` of them failing (one retry, then dead-lettered), mixed
    so that retries and dead-letterings (publishes by the workers) happen around the drops."""
    jobs = []
    for index in range(JOBS + JOBS // FAIL_EVERY):
        fails = index % (FAIL_EVERY + 1) == FAIL_EVERY
        args: dict[str, object] = {"sleep": SLEEP, **({"fail": "boom"} if fails else {})}
        job = Job(
            "work",
            queue=chaos.queue,
            args=args,
            retries=1 if fails else 0,
            _connection=chaos.conn,
        )
        jobs.append((fails, job))
    for first in range(0, len(jobs), 500):
        await asyncio.gather(*(job.enqueue() for _, job in jobs[first : first + 500]))
    ok = [str(job._last_id) for fails, job in jobs if not fails]
    failing = [str(job._last_id) for fails, job in jobs if fails]
    return ok, failing


def _completed(count: int) -> Callable[[LedgerView], bool]:
    return lambda view: len(view.completed_ids()) >= count


def _accepted_more(proxy: Proxy, before: int) -> Callable[[LedgerView], bool]:
    return lambda _view: proxy.accepted > before


def _resume_delays(view: LedgerView, drops: list[float]) -> list[float]:
    """For each drop, seconds to the first run started after it."""
    starts = sorted(run.start for run in view.runs)
    delays = []
    for at in drops:
        after = [s for s in starts if s >= at]
        if after:
            delays.append(after[0] - at)
    return delays


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


# Regression tests: a settlement of a delivery that a dropped connection (RabbitMQ) or a
# rebalance (Kafka) took away is ignored *and logged*, so that C3's `stale_logged` counts them.


async def test_stale_rabbitmq_settlements_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    from unittest.mock import AsyncMock

    from repid.brokers.rabbitmq.consumer import ChannelState

    channel = AsyncMock()
    state = ChannelState(channel, prefetch=10)
    state.alive = False  # the channel died with its connection
    with caplog.at_level(logging.WARNING, logger="repid.brokers.rabbitmq.broker"):
        assert await state.ack(7) is False
        assert await state.settle_now(8, requeue=True) is False
    assert [r.getMessage() for r in caplog.records] == [
        "stale ack of delivery tag 7 ignored: its channel closed, RabbitMQ delivers the "
        "message again",
        "stale reject of delivery tag 8 ignored: its channel closed, RabbitMQ delivers the "
        "message again",
    ]
    channel.basic_ack.assert_not_called()
    channel.basic_nack.assert_not_called()


async def test_stale_kafka_settlements_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    from aiokafka import TopicPartition

    from repid.brokers.base import Delivery
    from repid.brokers.kafka.broker import KafkaMessageBroker
    from repid.brokers.kafka.consumer import KafkaConsumer, _Handle, _Partition
    from repid.data import MessageCategory, Parameters, RoutingKey

    broker = KafkaMessageBroker("127.0.0.1:1")  # never connected
    consumer = KafkaConsumer(broker, "q", None, None, MessageCategory.NORMAL)
    part = _Partition(TopicPartition("q", 3))
    deliveries = []
    for offset in (5, 6):
        part.pending.append(offset)
        consumer._outstanding += 1
        part.running += 1
        handle = _Handle(consumer, part, offset)
        deliveries.append(Delivery(RoutingKey(f"id-{offset}", "x", "q"), "", Parameters(), handle))
    part.revoked = True  # a rebalance gave the partition to another member meanwhile
    with caplog.at_level(logging.WARNING, logger="repid.brokers.kafka.broker"):
        assert await KafkaConsumer.settle(deliveries[0], None) is False
        assert await KafkaConsumer.give_back(deliveries[1]) is False
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        f"stale settlement of message id-{n} ignored: {part.tp} was revoked, its next owner "
        "runs the message again"
        for n in (5, 6)
    ]
    assert list(part.pending) == [5, 6]  # nothing finished: the next owner gets both
