"""Issue 26, defect 8, broker side: a password in a broker URL never appears in an error (its
text, its repr, its chained causes), a repr or a log line.

Each case builds the error with the password `S3CRET` in the URL (placed where parsers trip
over it: after a "/", where the port or the database is read) and looks for it everywhere.
"""

from __future__ import annotations

import logging
import traceback
from collections.abc import Callable
from typing import Any

import pytest

from repid import (
    BrokerUnavailableError,
    ConfigurationError,
    Connection,
    KafkaMessageBroker,
    RedisBucketBroker,
    RedisMessageBroker,
)
from repid.brokers.rabbitmq import RabbitMessageBroker
from repid.errors import map_broker_errors
from tests.conformance.specs.rabbitmq import DSN as RABBITMQ_DSN

SECRET = "S3CRET"


def assert_hidden(exc: BaseException, caplog: pytest.LogCaptureFixture | None = None) -> None:
    """`SECRET` (or a piece of it around a "/") is nowhere in `exc`, its causes or the logs."""
    texts = [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    if caplog is not None:
        texts.append(caplog.text)
        texts.extend(repr(record.args) for record in caplog.records)
    for text in texts:
        for piece in (SECRET, "S3/", "/CRET", "CRET@"):
            assert piece not in text, f"{piece!r} leaked in: {text[:300]!r}"


def _raised(build: Callable[[], Any]) -> BaseException:
    with pytest.raises(Exception) as info:
        build()
    return info.value


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(f"http://user:{SECRET}@127.0.0.1:6379/0", id="wrong-scheme"),
        pytest.param(f"redis://user:12/{SECRET}@127.0.0.1/0", id="slash-read-as-database"),
        pytest.param("redis://user:S3/CRET@127.0.0.1:6379/0", id="slash-read-as-port"),
        pytest.param(f"redis://user:{SECRET}@127.0.0.1:6379/not-a-db", id="bad-database"),
        pytest.param(f"redis://user:{SECRET}@127.0.0.1:port/0", id="bad-port"),
    ],
)
@pytest.mark.parametrize("broker", [RedisMessageBroker, RedisBucketBroker])
def test_redis_dsn_errors_mask_the_password(broker: type[Any], dsn: str) -> None:
    exc = _raised(lambda: broker(dsn))
    assert isinstance(exc, ConfigurationError)
    assert "***" in str(exc)  # the DSN is still quoted, masked, to say which one is wrong
    assert_hidden(exc)


def test_redis_reprs_mask_the_password() -> None:
    dsn = f"redis://user:{SECRET}@127.0.0.1:6379/0"
    brokers = [RedisMessageBroker(dsn), RedisBucketBroker(dsn, use_result_bucket=True)]
    conn = Connection(brokers[0], results_bucket_broker=brokers[1])
    for obj in (*brokers, brokers[0].address, conn):
        assert SECRET not in repr(obj)
    assert "127.0.0.1" in repr(brokers[0])


async def test_redis_connect_error_masks_the_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    broker = RedisMessageBroker(
        f"redis://user:{SECRET}@127.0.0.1:1/0", connect_timeout=1.0, operation_timeout=1.0
    )
    with pytest.raises(BrokerUnavailableError) as info:
        await broker.connect()
    await broker.disconnect()
    assert_hidden(info.value, caplog)


@pytest.mark.parametrize(
    "servers",
    [
        pytest.param(f"user:{SECRET}@127.0.0.1:9092", id="userinfo"),
        pytest.param(f"kafka://user:{SECRET}@127.0.0.1:9092", id="url"),
        pytest.param(f"127.0.0.1:9092,user:{SECRET}@127.0.0.2:9092", id="second-of-a-list"),
        pytest.param(["127.0.0.1:9092", "user:S3/CRET@127.0.0.2:9092"], id="list-slash"),
    ],
)
def test_kafka_credentials_in_bootstrap_servers_are_refused_masked(servers: Any) -> None:
    exc = _raised(lambda: KafkaMessageBroker(servers))
    assert isinstance(exc, ConfigurationError)
    assert "client_options" in str(exc)  # says where credentials go instead
    assert_hidden(exc)


def test_kafka_repr_names_the_servers() -> None:
    broker = KafkaMessageBroker("127.0.0.1:9092", client_options={"sasl_plain_password": SECRET})
    assert "127.0.0.1:9092" in repr(broker)
    assert SECRET not in repr(broker)


@pytest.mark.parametrize(
    "dsn",
    [
        pytest.param(f"amqp://guest:{SECRET}@127.0.0.1:1/", id="unreachable"),
        pytest.param("amqp://guest:S3/CRET@127.0.0.1:5672/", id="slash-in-password"),
        pytest.param(f"amqp://guest:{SECRET}@127.0.0.1:port/", id="bad-port"),
    ],
)
async def test_rabbitmq_connect_errors_mask_the_password(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    broker = RabbitMessageBroker(dsn, timeout=2.0)
    assert SECRET not in repr(broker)
    assert "S3/" not in repr(broker)
    with pytest.raises((BrokerUnavailableError, ConfigurationError)) as info:
        await broker.connect()
    await broker.disconnect()
    assert "***" in str(info.value)
    assert_hidden(info.value, caplog)


async def test_rabbitmq_wrong_password_is_masked(caplog: pytest.LogCaptureFixture) -> None:
    """Against the suite's server: the login is refused, and the error says so, masked."""
    caplog.set_level(logging.DEBUG)
    user_and_host = RABBITMQ_DSN.split("://", 1)[1].rsplit("@", 1)
    user = user_and_host[0].split(":", 1)[0]
    broker = RabbitMessageBroker(f"amqp://{user}:{SECRET}@{user_and_host[1]}", timeout=5.0)
    with pytest.raises(BrokerUnavailableError) as info:
        await broker.connect()
    await broker.disconnect()
    assert "ACCESS_REFUSED" in str(info.value)
    assert_hidden(info.value, caplog)


def test_mapped_library_errors_mask_urls_in_their_text() -> None:
    """A client library's exception that quotes its URL is masked when repid maps it."""
    with (
        pytest.raises(BrokerUnavailableError) as info,
        map_broker_errors({OSError: BrokerUnavailableError}, "connecting"),
    ):
        raise OSError(f"cannot reach redis://user:{SECRET}@10.0.0.1:6379/0 (refused)")
    assert "redis://user:***@10.0.0.1:6379/0" in str(info.value)
    assert SECRET not in str(info.value)
