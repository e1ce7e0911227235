"""A refused login or RabbitMQ vhost is one sentence naming the host, never the password.

Against the real servers: RabbitMQ (wrong password, a vhost that does not exist), Redis (a
password for a user without one, an ACL user that does not exist), PostgreSQL (a role that
does not exist) and NATS (a private server that wants a password).
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import pytest

from repid.brokers.nats import NatsMessageBroker
from repid.brokers.postgres import PostgresMessageBroker
from repid.brokers.rabbitmq import RabbitMessageBroker
from repid.brokers.redis import RedisMessageBroker
from repid.cli import main
from repid.errors import BrokerAuthenticationError, BrokerUnavailableError

SECRET = f"pw{uuid4().hex}"
APP = "cli_broker_app:router"
MISSING = f"no_such_vhost_{uuid4().hex[:8]}"
CASES = [
    pytest.param(
        f"amqp://guest:{SECRET}@127.0.0.1:5672/",
        "RabbitMQ at 127.0.0.1:5672 refused the login of user 'guest' "
        "(ACCESS_REFUSED: wrong user or password)",
        id="rabbitmq-password",
    ),
    pytest.param(
        f"amqp://guest:guest@127.0.0.1:5672/{MISSING}",
        f"RabbitMQ at 127.0.0.1:5672: vhost '{MISSING}' refused",
        id="rabbitmq-vhost",
    ),
    pytest.param(
        f"redis://:{SECRET}@127.0.0.1:6379/0",
        "Redis at 127.0.0.1:6379 refused the login of user 'default'",
        id="redis-password",
    ),
    pytest.param(
        f"redis://nobody_{SECRET[:8]}:{SECRET}@127.0.0.1:6379/0",
        f"Redis at 127.0.0.1:6379 refused the login of user 'nobody_{SECRET[:8]}': WRONGPASS",
        id="redis-acl-user",
    ),
    pytest.param(
        f"postgresql://nobody_{SECRET[:8]}:{SECRET}@127.0.0.1:5432/test",
        "PostgreSQL at postgresql://nobody_",
        id="postgres-role",
    ),
]


@pytest.mark.parametrize(("url", "sentence"), CASES)
def test_cli_says_the_refusal_in_one_sentence(
    url: str, sentence: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["queues", "-A", APP, "--broker", url]) == 1
    err = capsys.readouterr().err
    [line] = [line for line in err.splitlines() if line.startswith("repid: error:")]
    assert sentence in line
    assert "refused" in line
    assert SECRET not in err
    assert " object at 0x" not in err
    assert "Frame" not in line


@pytest.mark.parametrize(
    ("factory", "url"),
    [
        (RabbitMessageBroker, f"amqp://guest:guest@127.0.0.1:5672/{MISSING}"),
        (RabbitMessageBroker, f"amqp://guest:{SECRET}@127.0.0.1:5672/"),
        (RedisMessageBroker, f"redis://nobody:{SECRET}@127.0.0.1:6379/0"),
        (PostgresMessageBroker, f"postgresql://nobody:{SECRET}@127.0.0.1:5432/test"),
    ],
    ids=["rabbitmq-vhost", "rabbitmq-password", "redis", "postgres"],
)
async def test_connect_raises_an_authentication_error(factory: type, url: str) -> None:
    broker = factory(url)
    with pytest.raises(BrokerAuthenticationError) as info:
        await asyncio.wait_for(broker.connect(), 60)
    assert isinstance(info.value, BrokerUnavailableError)  # handled as before by callers
    assert SECRET not in str(info.value)
    assert "\n" not in str(info.value)
    await broker.disconnect()


@pytest.fixture
def nats_with_password(tmp_path: Path) -> Iterator[str]:
    """A private nats-server that wants a user and password, stopped after the test."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
    log = (tmp_path / "nats.log").open("wb")
    server = subprocess.Popen(
        [binary, "-a", "127.0.0.1", "-p", str(port), "--user", "app", "--pass", "rightpw"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise AssertionError("the private nats-server did not start") from None
                time.sleep(0.05)
        yield f"127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(30)
        log.close()


async def test_nats_refused_login_is_one_sentence(nats_with_password: str) -> None:
    broker = NatsMessageBroker(f"nats://app:{SECRET}@{nats_with_password}")
    with pytest.raises(BrokerAuthenticationError) as info:
        await asyncio.wait_for(broker.connect(), 60)
    text = str(info.value)
    assert text.startswith(f"NATS at nats://app:***@{nats_with_password} refused the login")
    assert SECRET not in text
    assert "\n" not in text
    await broker.disconnect()


@pytest.mark.parametrize(
    "url",
    [
        f"amqp://guest:{SECRET}@127.0.0.1:5672/",
        f"redis://nobody:{SECRET}@127.0.0.1:6379/0",
        f"postgresql://nobody:{SECRET}@127.0.0.1:5432/test",
    ],
    ids=["rabbitmq", "redis", "postgres"],
)
async def test_worker_start_does_not_retry_a_refused_login(url: str) -> None:
    # An unreachable broker is retried for `startup_timeout` (60 s here); a refused login is
    # raised at the first attempt: the worker gives up well before a second one could start.
    from repid import Connection, Router, Worker

    router = Router()

    @router.actor
    async def noop() -> None: ...

    broker = {"amqp": RabbitMessageBroker, "redis": RedisMessageBroker}.get(
        url.split(":")[0], PostgresMessageBroker
    )(url)
    worker = Worker(
        routers=[router], _connection=Connection(broker), startup_timeout=60, handle_signals=[]
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(BrokerAuthenticationError) as info:
        await asyncio.wait_for(worker.run(), 50)
    assert loop.time() - started < 20
    assert SECRET not in str(info.value)


def test_cli_run_does_not_retry_a_refused_login(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    code = main(
        [
            "run",
            APP,
            "--broker",
            f"amqp://guest:{SECRET}@127.0.0.1:5672/",
            "--startup-timeout",
            "60",
        ]
    )
    assert code != 0
    assert time.monotonic() - started < 20
    err = capsys.readouterr().err
    assert "refused the login of user 'guest'" in err
    assert "retrying" not in err
    assert SECRET not in err
