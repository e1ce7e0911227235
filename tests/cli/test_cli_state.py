"""`--state redis://...`: the shared state of a RabbitMQ or Kafka broker, from the CLI."""

from __future__ import annotations

from typing import Any

import pytest

from repid.cli import _child_command, _child_env, build_parser
from repid.cli.target import CLIError, connection_from_url
from repid.state.redis import RedisSharedState


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672/", "kafka://127.0.0.1:19092"])
def test_a_state_url_pairs_the_broker_with_a_redis_shared_state(url: str) -> None:
    connection = connection_from_url(url, None, "redis://127.0.0.1:6379/3?prefix=app7:")
    broker: Any = connection.raw_message_broker
    assert broker.capabilities.shared_state is True
    state = broker._state
    assert isinstance(state, RedisSharedState)
    assert (state.prefix, state.link.address.db) == ("app7:", 3)


@pytest.mark.parametrize("url", ["amqp://guest:guest@127.0.0.1:5672/", "kafka://127.0.0.1:19092"])
def test_without_a_state_url_the_broker_keeps_state_per_process(url: str) -> None:
    broker: Any = connection_from_url(url).raw_message_broker
    assert broker.capabilities.shared_state is False
    assert broker._state is None


def test_the_default_state_prefix() -> None:
    broker: Any = connection_from_url("amqp://h/", None, "redis://h:6379/0").raw_message_broker
    assert broker._state.prefix == "repid:state:"


@pytest.mark.parametrize(
    ("url", "state", "error"),
    [
        ("amqp://h/", "amqp://h/", "state URL 'amqp://h/': expected redis://"),
        ("redis://h/0", "redis://h/1", "for amqp:// and kafka:// brokers; redis:// has its own"),
        ("memory://", "redis://h/1", "for amqp:// and kafka:// brokers; memory://"),
    ],
)
def test_bad_state_urls_are_clear_errors(url: str, state: str, error: str) -> None:
    with pytest.raises(CLIError, match=error):
        connection_from_url(url, None, state)


def test_state_option_and_environment_reach_the_supervised_children(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    args = build_parser().parse_args(
        ["run", "m:w", "--broker", "amqp://h/", "--state", "redis://h/0", "--processes", "2"]
    )
    assert args.state == "redis://h/0"
    assert "--state" not in _child_command(args)  # a URL may hold a password: not in argv
    assert _child_env(args)["REPID_STATE_URL"] == "redis://h/0"
    monkeypatch.setenv("REPID_STATE_URL", "redis://env/0")
    assert build_parser().parse_args(["run", "m:w"]).state == "redis://env/0"
