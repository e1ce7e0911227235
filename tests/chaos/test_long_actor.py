"""C7: an actor that runs longer than any lease or visibility window still runs once.

Two worker processes consume the queue; each job's actor runs several times longer than the
broker's window, after which a broker without working renewal would hand the job to the idle
worker. The window per broker:

- Redis and SQLite: the delivery's lease (`lease_duration`, 0.5 s here), renewed while the
  actor runs.
- PostgreSQL: the claimed row's lease (`lease_duration`, 0.5 s here), renewed the same way.
- RabbitMQ: there is no lease — a delivery belongs to its channel until it is acknowledged or
  the channel closes (the server's `consumer_timeout`, 30 min by default, is out of reach of a
  test). The window checked instead is the connection's heartbeat (1 s here, URL
  `?heartbeat=1`): a worker whose loop stopped heartbeating would lose its connection and the
  delivery would go to the other worker.
- Kafka: there is no lease either; the window is the group's session timeout (6 s): a member
  whose heartbeats stopped while its actor ran would be expelled and its partitions (with the
  uncommitted job) given to the other worker.

After the jobs complete, the ledger is watched a little longer (1.5 windows, at most 2 s: an
expelled Kafka member's job would restart on the other worker during the run already): no
second run may start.
"""

from __future__ import annotations

import pytest

from tests.chaos._harness import (
    DEFAULT_URLS,
    SIZE,
    BrokerSettings,
    Chaos,
    loss_figures,
    record_result,
    size,
)

LEASE = 0.5
HEARTBEAT = 1.0
JOBS = size(4, 20)
WINDOWS = size(3, 10)  # how many windows an actor runs

pytestmark = pytest.mark.timeout(size(120, 600))


def window(settings: BrokerSettings) -> float:
    """The broker's window (see the module docstring), in seconds."""
    if settings.name in ("redis", "sqlite", "postgres", "nats"):
        return float(settings.options["lease_duration"])
    if settings.name == "rabbitmq":
        return HEARTBEAT
    return float(settings.options["session_timeout"])


@pytest.fixture
def broker_settings(broker_name: str) -> BrokerSettings:
    if broker_name in ("redis", "sqlite", "postgres", "nats"):
        return BrokerSettings.default(broker_name, lease_duration=LEASE)
    if broker_name == "rabbitmq":
        url = DEFAULT_URLS["rabbitmq"]
        url += ("&" if "?" in url else "?") + f"heartbeat={HEARTBEAT:g}"
        return BrokerSettings.default("rabbitmq", url=url)
    return BrokerSettings.default("kafka")


async def test_c7_actor_longer_than_the_window_runs_once(chaos: Chaos) -> None:
    span = window(chaos.broker)
    # Kafka's window is 6 s: fewer windows there keep the short run short.
    windows = WINDOWS if chaos.broker.name != "kafka" else size(1.3, 3.0)
    workers = chaos.pool.start(2)
    await chaos.until(
        lambda view: all(p.pid in view.ready for p in workers), "both workers to consume"
    )
    ids = await chaos.enqueue(JOBS, sleep=span * windows)
    view = await chaos.until(
        lambda view: view.completed_ids() >= set(ids),
        "every long job to complete",
        timeout=span * windows * JOBS + 60,
    )
    view = await chaos.holds(
        lambda view: len([r for r in view.runs if r.job in ids]) == JOBS,
        "one run per job",
        min(span * 1.5, 2.0),  # a copy would have started well within this after the end
    )
    figures = loss_figures(view, ids)
    runs = [r for r in view.runs if r.job in ids]
    figures.update(
        window_s=span,
        actor_s=round(span * windows, 3),
        longest_run_s=round(max((r.end or r.start) - r.start for r in runs), 3),
    )
    record_result("C7", chaos.broker.name, SIZE, figures)
    assert figures["lost"] == 0, figures
    assert figures["runs"] == JOBS, figures
    assert figures["duplicates"] == 0, figures
    assert all(r.settled is not None for r in runs), runs
    assert not chaos.pool.crashes(), chaos.pool.crashes()
