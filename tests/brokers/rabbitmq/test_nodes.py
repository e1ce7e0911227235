"""A list of RabbitMQ nodes: parsing, masking, and failover when the node in use goes away."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from uuid import uuid4

import pytest

from repid import BrokerUnavailableError, Connection, Job, Queue, Router, Worker
from repid.brokers.rabbitmq._nodes import masked, split_nodes
from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from tests.chaos._servers import Proxy, free_port
from tests.conformance.specs.rabbitmq import DSN, PREFIX
from tests.conformance.support import running, wait, wait_until

pytestmark = pytest.mark.broker("rabbitmq")

SECRET = "s3cr3t-pw"


def test_a_comma_list_shares_user_vhost_and_query() -> None:
    dsn = f"amqp://u:{SECRET}@h1:5672,h2:5673,h3/vh?heartbeat=5"
    assert split_nodes(dsn) == [
        f"amqp://u:{SECRET}@h1:5672/vh?heartbeat=5",
        f"amqp://u:{SECRET}@h2:5673/vh?heartbeat=5",
        f"amqp://u:{SECRET}@h3/vh?heartbeat=5",
    ]
    assert split_nodes(f"amqp://a/,amqps://u:{SECRET}@b:1/") == [
        "amqp://a/",
        f"amqps://u:{SECRET}@b:1/",
    ]
    assert split_nodes(["amqp://n1", "amqp://n2"]) == ["amqp://n1", "amqp://n2"]
    assert split_nodes("amqp://one/") == ["amqp://one/"]
    with pytest.raises(ValueError, match="no RabbitMQ address"):
        RabbitMessageBroker([])


def test_every_password_is_masked_in_the_repr() -> None:
    broker = RabbitMessageBroker([f"amqp://u:{SECRET}@n1/", f"amqp://v:{SECRET}2@n2/"])
    assert SECRET not in repr(broker)
    assert "n1" in repr(broker)
    assert "n2" in repr(broker)
    assert SECRET not in masked(split_nodes(f"amqp://u:{SECRET}@h1,h2/"))


async def test_no_node_answering_is_a_masked_repid_error() -> None:
    nodes = [f"amqp://u:{SECRET}@127.0.0.1:{free_port()}/" for _ in range(2)]
    broker = RabbitMessageBroker(nodes, connect_timeout=2.0)
    with pytest.raises(BrokerUnavailableError) as info:
        await broker.connect()
    text = f"{info.value} {info.value!r} {info.value.__cause__!r}"
    assert SECRET not in text
    assert nodes[0].split("@")[1] in str(info.value)


@pytest.fixture
def proxies() -> Iterator[tuple[Proxy, Proxy]]:
    port = int(DSN.rsplit(":", 1)[1].split("/")[0])
    pair = (Proxy(port), Proxy(port))
    for proxy in pair:
        proxy.start()
    yield pair
    for proxy in pair:
        proxy.close()


def _via(proxy: Proxy) -> str:
    return DSN.replace(DSN.rsplit(":", 1)[1].split("/")[0], str(proxy.port), 1)


async def test_connects_to_the_first_node_that_answers(proxies: tuple[Proxy, Proxy]) -> None:
    down = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    broker = RabbitMessageBroker([down, _via(proxies[1])], prefix=PREFIX, connect_timeout=3.0)
    await broker.connect()
    try:
        name = f"nodes_{uuid4().hex[:8]}"
        await broker.queue_declare(name)
        await broker.queue_delete(name)
        assert proxies[1].accepted >= 1
    finally:
        await broker.disconnect()


async def test_producer_and_worker_fail_over_when_their_node_goes_away(
    proxies: tuple[Proxy, Proxy],
) -> None:
    first, second = proxies
    dsn = f"{_via(first)},{_via(second)}"  # the comma form
    broker = RabbitMessageBroker(dsn, prefix=PREFIX, reconnect_backoff=0.2, timeout=15.0)
    conn = Connection(broker)
    await conn.connect()
    queue = Queue(f"nodes_{uuid4().hex[:8]}", _connection=conn)
    await queue.declare()
    router = Router()
    ran: set[int] = set()
    enqueued: set[int] = set()
    before = asyncio.Event()

    @router.actor(queue=queue.name)
    async def work(n: int) -> None:
        ran.add(n)
        if n == 9:
            before.set()

    async def produce(numbers: range) -> None:
        for n in numbers:
            await Job("work", queue=queue.name, args={"n": n}, _connection=conn).enqueue()
            enqueued.add(n)

    try:
        async with running(Worker([router], handle_signals=[], _connection=conn)):
            await produce(range(10))
            await wait(before, "the first ten jobs", timeout=10)
            assert first.accepted >= 1
            assert second.accepted == 0
            first.close()  # the node in use is gone: no connection, no new ones
            await produce(range(10, 20))  # retried until the connection is back elsewhere
            await wait_until(lambda: ran >= enqueued, "every enqueued job to run", timeout=30)
        assert second.accepted >= 1
        assert enqueued == set(range(20))
        assert ran == enqueued
    finally:
        with contextlib.suppress(Exception):
            await queue.delete()
        await conn.disconnect()
