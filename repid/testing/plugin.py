"""pytest plugin of repid (registered through the `pytest11` entry point): the
`@pytest.mark.repid(...)` marker and the `repid_*` fixtures, which give a test a fresh in-memory
app in which `await job.enqueue()` runs the actor at once. Usage: docs/testing.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from unittest.mock import MagicMock

    from repid.connection import Connection
    from repid.main import Repid
    from repid.queue import Queue
    from repid.router import Router
    from repid.testing.broker import TestMessageBroker
    from repid.testing.environment import RepidTestEnvironment
    from repid.testing.events import RecordedEvent
    from repid.testing.queue_view import InMemoryQueueView

__all__ = [
    "repid_app",
    "repid_connection",
    "repid_declare_all_known_queues",
    "repid_get_event_log",
    "repid_get_in_memory_queue",
    "repid_get_mocked_actor",
    "repid_test_broker",
]

MARKER = "repid"
_MARKER_HELP = (
    "repid(routers=None, autoconnection=True, declare_all_known_queues=True): run the test "
    "against an in-memory repid app whose enqueue() runs the routers' actors right away"
)
_OPTIONS = ("routers", "autoconnection", "declare_all_known_queues")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", _MARKER_HELP)


@dataclass
class _Options:
    routers: list[Router] = field(default_factory=list)
    autoconnection: bool = True
    declare_all_known_queues: bool = True


def _options(node: pytest.Item | pytest.Collector | None) -> _Options:
    from repid.router import Router

    marker = None if node is None else node.get_closest_marker(MARKER)
    if marker is None:
        return _Options()
    if marker.args:
        raise TypeError(
            "@pytest.mark.repid takes keyword arguments only: "
            "routers=[...], autoconnection=..., declare_all_known_queues=..."
        )
    unknown = sorted(set(marker.kwargs) - set(_OPTIONS))
    if unknown:
        raise TypeError(
            f"@pytest.mark.repid got unexpected argument(s) {unknown}; it takes {list(_OPTIONS)}"
        )
    routers = marker.kwargs.get("routers") or []
    if isinstance(routers, Router):
        routers = [routers]
    routers = list(routers)
    for router in routers:
        if not isinstance(router, Router):
            raise TypeError(
                f"@pytest.mark.repid(routers=...) expects Router or Worker objects, "
                f"got {type(router).__name__}"
            )
    return _Options(
        routers=routers,
        autoconnection=bool(marker.kwargs.get("autoconnection", True)),
        declare_all_known_queues=bool(marker.kwargs.get("declare_all_known_queues", True)),
    )


@pytest.fixture
def _repid_environment(request: pytest.FixtureRequest) -> Iterator[RepidTestEnvironment]:
    from repid.testing.environment import RepidTestEnvironment

    options = _options(request.node)
    env = RepidTestEnvironment(
        options.routers,
        autoconnection=options.autoconnection,
        declare_all_known_queues=options.declare_all_known_queues,
    )
    env.start()
    try:
        yield env
    finally:
        env.stop()


@pytest.fixture(autouse=True)
def _repid_marker(request: pytest.FixtureRequest) -> None:
    """Set up the app of tests marked `@pytest.mark.repid` even if they request no fixture."""
    if request.node.get_closest_marker(MARKER) is not None:
        request.getfixturevalue("_repid_environment")


@pytest.fixture
def repid_app(_repid_environment: RepidTestEnvironment) -> Repid:
    """The test's in-memory `Repid` app."""
    return _repid_environment.app


@pytest.fixture
def repid_connection(_repid_environment: RepidTestEnvironment) -> Connection:
    """The `Connection` of the test's app (the default connection unless autoconnection=False)."""
    return _repid_environment.connection


@pytest.fixture
def repid_test_broker(_repid_environment: RepidTestEnvironment) -> TestMessageBroker:
    """The app's `TestMessageBroker` (e.g. `await repid_test_broker.run_pending()`)."""
    return _repid_environment.broker


@pytest.fixture
def repid_get_event_log(
    _repid_environment: RepidTestEnvironment,
) -> Callable[..., list[RecordedEvent]]:
    """A callable returning the events recorded so far (`RecordedEvent`s, oldest first).

    Call it with an event (`"ack"`) or signal name (`"after_ack"`) to get only those. The log
    starts with the app's setup (e.g. `queue_declare` of the known queues); an actor run at
    enqueue shows between `before_enqueue` and `after_enqueue`.
    """
    return _repid_environment.recorder.get


@pytest.fixture
def repid_get_mocked_actor(
    _repid_environment: RepidTestEnvironment,
) -> Callable[[str], MagicMock]:
    """A callable taking an actor name and returning a mock wrapping that actor.

    The mock (`AsyncMock` for async actors) records every run with the converted arguments, and
    the actor's function still runs and returns its result.
    """
    return _repid_environment.broker.mock_actor


@pytest.fixture
def repid_get_in_memory_queue(
    _repid_environment: RepidTestEnvironment,
) -> Callable[[str | Queue], InMemoryQueueView]:
    """A callable taking a queue name (or `Queue`) and returning a live `InMemoryQueueView`."""
    return _repid_environment.queue_view


@pytest.fixture
def repid_declare_all_known_queues(_repid_environment: RepidTestEnvironment) -> list[str]:
    """Declare every queue the routers' actors use; the value is the list of their names."""
    return _repid_environment.declare_queues()
