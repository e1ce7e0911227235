"""The admin channel under concurrency: probes that fail (passive declares of delay queues that
do not exist) never fail another RPC waiting on the same channel; and a declaration racing the
auto-delete of the dead-letter exchange shared by a prefix declares the exchange again."""

from __future__ import annotations

import asyncio
from typing import Any
from uuid import uuid4

import pytest

from repid.brokers.rabbitmq.broker import RabbitMessageBroker
from tests.conformance.specs.rabbitmq import DSN

pytestmark = pytest.mark.broker("rabbitmq")


async def test_a_declare_racing_the_exchange_auto_delete_binds_again() -> None:
    prefix = f"race-{uuid4().hex[:8]}-"
    other = RabbitMessageBroker(DSN, prefix=prefix, timeout=5.0)
    broker = RabbitMessageBroker(DSN, prefix=prefix, timeout=5.0)
    await other.connect()
    await broker.connect()
    try:
        await other.queue_declare("first")  # the exchange exists, bound to first:dead only
        admin = broker._topology._admin
        binds = 0

        async def racing(operation: str, *args: Any, **kwargs: Any) -> Any:
            nonlocal binds
            if operation == "queue_bind":
                binds += 1
                if binds == 1:  # the other process deletes its last queue right now
                    await other.queue_delete("first")
            return await admin(operation, *args, **kwargs)

        broker._topology._admin = racing
        await broker.queue_declare("second")
        assert binds == 2, "the first bind did not fail: the race was not reproduced"
        # The binding holds: a dead letter reaches second:dead through the exchange.
        channel = await broker._new_channel(confirms=True)
        try:
            await channel.basic_publish(
                b"x", exchange=broker.dead_letter_exchange, routing_key=prefix + "second:dead"
            )
            declared = await channel.queue_declare(prefix + "second:dead", passive=True)
            assert declared.message_count == 1
        finally:
            await channel.close()
    finally:
        broker._topology._admin = admin
        await broker.queue_delete("second")
        await broker.disconnect()
        await other.disconnect()


async def test_failing_probes_do_not_fail_the_rpcs_queued_behind_them() -> None:
    broker = RabbitMessageBroker(DSN, prefix=f"probe-{uuid4().hex[:8]}-", timeout=5.0)
    await broker.connect()
    try:
        await broker.queue_declare("q")
        errors: list[BaseException] = []
        for _ in range(20):  # a probe that fails, and two checks of the queue queued behind it
            missing = broker._admin("queue_declare", f"missing-{uuid4().hex}", passive=True)
            results = await asyncio.gather(
                missing, broker._check_queue("q"), broker._check_queue("q"), return_exceptions=True
            )
            errors += [r for r in results[1:] if isinstance(r, BaseException)]
        assert errors == [], errors
    finally:
        await broker.queue_delete("q")
        await broker.disconnect()
