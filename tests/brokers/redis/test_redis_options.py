"""The Redis brokers' connection keywords (`connect_timeout`, `operation_timeout`,
`reconnect_backoff`, the `ConnectionPolicy` every network broker takes), against stand-in
servers that never answer or hang up at once; no `redis-server` needed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from repid import BrokerUnavailableError, RedisBucketBroker, RedisMessageBroker
from repid.brokers.base import ConnectionPolicy
from repid.errors import ConfigurationError
from repid.state.redis import RedisSharedState

BROKERS: list[Callable[..., Any]] = [RedisMessageBroker, RedisBucketBroker, RedisSharedState]


@pytest.mark.parametrize("make", BROKERS)
def test_defaults(make: Callable[..., Any]) -> None:
    broker = make("redis://127.0.0.1:1/0")
    assert broker.connection_policy == ConnectionPolicy(5.0, 10.0, 0.05)
    assert broker.link.policy == broker.connection_policy


@pytest.mark.parametrize("make", BROKERS)
def test_the_keywords_set_the_policy_of_the_link(make: Callable[..., Any]) -> None:
    broker = make(
        "redis://127.0.0.1:1/0", connect_timeout=1.5, operation_timeout=2.5, reconnect_backoff=0.2
    )
    assert broker.connection_policy == ConnectionPolicy(1.5, 2.5, 0.2)
    assert (broker.link.connect_timeout, broker.link.timeout) == (1.5, 2.5)


@pytest.mark.parametrize("make", BROKERS)
@pytest.mark.parametrize(
    "options", [{"connect_timeout": 0}, {"operation_timeout": -1.0}, {"reconnect_backoff": -0.1}]
)
def test_invalid_values_are_configuration_errors(
    make: Callable[..., Any], options: dict[str, float]
) -> None:
    with pytest.raises(ConfigurationError):
        make("redis://127.0.0.1:1/0", **options)


class StandIn:
    """A TCP server that counts connections and either never answers or hangs up at once."""

    def __init__(self, *, hang_up: bool) -> None:
        self.hang_up = hang_up
        self.connections = 0
        self.port = 0
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.hang_up:
            writer.close()
        else:
            self._writers.append(writer)  # kept open, never answered


@pytest.fixture
async def stand_in(request: pytest.FixtureRequest) -> AsyncIterator[StandIn]:
    server_of = StandIn(hang_up=request.param)
    server = await asyncio.start_server(server_of._serve, "127.0.0.1", 0)
    server_of.port = server.sockets[0].getsockname()[1]
    try:
        yield server_of
    finally:
        for writer in server_of._writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("stand_in", [False], indirect=True)
async def test_connect_timeout_bounds_connect_to_a_server_that_never_answers(
    stand_in: StandIn,
) -> None:
    # db 1: connecting sends SELECT, which this server never answers.
    dsn = f"redis://127.0.0.1:{stand_in.port}/1"
    broker = RedisMessageBroker(dsn, connect_timeout=0.3, operation_timeout=30.0)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError, match="unreachable"):
        await broker.connect()
    assert 0.25 <= time.monotonic() - started < 5.0
    await broker.disconnect()


@pytest.mark.parametrize("stand_in", [False], indirect=True)
async def test_operation_timeout_bounds_a_command_that_is_never_answered(
    stand_in: StandIn,
) -> None:
    dsn = f"redis://127.0.0.1:{stand_in.port}/0"
    bucket = RedisBucketBroker(dsn, connect_timeout=5.0, operation_timeout=0.4)
    await bucket.connect()
    started = time.monotonic()
    with pytest.raises(BrokerUnavailableError):
        await bucket.get_bucket("any")
    assert 0.35 <= time.monotonic() - started < 5.0
    await bucket.disconnect()


async def _fail_one_operation(port: int, reconnect_backoff: float) -> None:
    bucket = RedisBucketBroker(
        f"redis://127.0.0.1:{port}/0", operation_timeout=1.0, reconnect_backoff=reconnect_backoff
    )
    with pytest.raises(BrokerUnavailableError):
        await bucket.get_bucket("any")
    await bucket.disconnect()


@pytest.mark.parametrize("stand_in", [True], indirect=True)
async def test_reconnect_backoff_spaces_the_retries(stand_in: StandIn) -> None:
    """Within one 1 s operation time-out, a 0.6 s first backoff leaves room for 2-3 attempts;
    a 0.01 s one (doubling: 0.01, 0.02, 0.04, ...) for 7 or more."""
    counts = []
    for backoff in (0.6, 0.01):
        before = stand_in.connections
        await _fail_one_operation(stand_in.port, backoff)
        counts.append(stand_in.connections - before)
    slow, fast = counts
    assert 1 <= slow <= 3, counts
    assert fast >= 5, counts
