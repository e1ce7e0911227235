"""Fixtures of the chaos suite: one `Chaos` world per test and broker, on the shared servers.

Every test here is marked `chaos`; `REPID_CHAOS=full` (scripts/chaos.sh) selects full sizes.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

# Their exit hooks drop the run's PostgreSQL schema, Redis keys and NATS streams and buckets.
import tests.conformance.specs.nats
import tests.conformance.specs.postgres
import tests.conformance.specs.redis  # noqa: F401
from tests.chaos._harness import BROKERS, DEFAULT_URLS, BrokerSettings, Chaos, record_outcome


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.chaos)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Remove this run's SQLite file (and its WAL) once every worker process has ended."""
    path = Path(DEFAULT_URLS["sqlite"].removeprefix("sqlite:///"))
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """The outcome of each chaos test goes next to its figures (see `record_result`)."""
    if "tests/chaos/" not in report.nodeid:
        return
    if report.when == "call" or (report.when == "setup" and not report.passed):
        record_outcome(report.nodeid, report.outcome)
    elif report.when == "teardown" and report.failed:
        record_outcome(report.nodeid, "failed")


@pytest.fixture(params=BROKERS)
def broker_name(request: pytest.FixtureRequest) -> str:
    """Each chaos test runs once per real broker ("redis", "rabbitmq", "kafka", "sqlite")."""
    name: str = request.param
    return name


@pytest.fixture
def broker_settings(broker_name: str) -> BrokerSettings:
    """The chaos defaults for the broker on the shared server (override per test if needed)."""
    return BrokerSettings.default(broker_name)


@pytest.fixture
async def chaos(broker_settings: BrokerSettings, tmp_path: Path) -> AsyncIterator[Chaos]:
    """A fresh queue, ledger and worker pool on the shared server of `broker_name`."""
    async with Chaos.open(broker_settings, tmp_path) as world:
        yield world
