"""Issue 26, defect 9: both read paths (the `fetch` script and the blocking XREADGROUP) take a
stream entry's `m` field, wherever it is among the fields, so whether a message runs does not
depend on which path fetched it; an entry without `m` is undecodable on both.

Before the fix the XREADGROUP path took the first field's value. (The parser half of defect 9,
the bulk-string terminator and garbage raising `BrokerError`, is tested in `test_resp.py`.)
"""

from __future__ import annotations

from typing import Any
from uuid import uuid4

import pytest
import redis.asyncio

from repid import Connection, MessageCategory
from repid.brokers.base import Delivery
from repid.brokers.redis._resp import RespParser
from repid.brokers.redis.consumer import RedisConsumer, envelope_field
from repid.codec import encode_message
from repid.data import Parameters, RoutingKey
from repid.errors import BrokerError
from repid.queue import Queue
from tests.conformance.specs.redis import DSN

ENTRIES = {
    "m-first": lambda env: {"m": env, "j": b"job-id"},
    "m-last": lambda env: {"j": b"job-id", "x": b"other", "m": env},
    "no-m": lambda env: {"j": env},
}


async def _read(conn: Connection, queue: Queue, fields: dict[str, bytes], path: str) -> Delivery:
    broker = conn.message_broker
    client = redis.asyncio.Redis.from_url(DSN)
    try:
        await client.xadd(broker.keys(queue.name)[1], fields)
    finally:
        await client.aclose()
    consumer: RedisConsumer = broker.get_consumer(queue.name, category=MessageCategory.NORMAL)
    await consumer.start()
    try:
        if path == "fetch":
            deliveries = await consumer._fetch_script(1)
        else:
            deliveries = await consumer._block(1, 1.0)
        (delivery,) = deliveries
        for settled in deliveries:
            await broker.ack(settled)
        return delivery
    finally:
        await consumer.finish()


@pytest.mark.parametrize("path", ["fetch", "xreadgroup"])
@pytest.mark.parametrize("entry", sorted(ENTRIES))
async def test_both_read_paths_take_the_m_field(connect: Any, path: str, entry: str) -> None:
    conn = await connect()
    queue = Queue(f"q_{uuid4().hex[:10]}", _connection=conn)
    await queue.declare()
    envelope = encode_message(RoutingKey("d9", "job", queue.name), '{"n": 1}', Parameters())
    delivery = await _read(conn, queue, ENTRIES[entry](envelope), path)
    if entry == "no-m":
        assert delivery.decode_error is not None
        assert delivery.raw == b""
    else:
        assert delivery.decode_error is None
        assert (delivery.key.id_, delivery.key.topic, delivery.payload) == ("d9", "job", '{"n": 1}')
    await queue.delete()


def test_envelope_field_finds_m_anywhere_and_nothing_otherwise() -> None:
    assert envelope_field([b"j", b"1", b"m", b"env"]) == b"env"
    assert envelope_field([b"m", b"env", b"j", b"1"]) == b"env"
    assert envelope_field([b"j", b"m"]) == b""  # "m" as a value is not the field
    assert envelope_field([b"m"]) == b""  # an odd field list from a foreign writer
    assert envelope_field(None) == b""
    assert envelope_field([]) == b""


def test_a_bulk_terminator_split_from_its_body_is_still_checked() -> None:
    parser = RespParser()
    assert parser.feed(b"$3\r\nabc") == []
    with pytest.raises(BrokerError, match="terminator"):
        parser.feed(b"XY")
