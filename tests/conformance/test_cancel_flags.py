"""A cancellation request applies to the run it was made for, never to a later job reusing the id.

Broker level, without a worker: the delivery is taken by hand, so "the job finished before any
worker read the request" is not a race here but the order of the calls.
"""

from __future__ import annotations

import asyncio

from .support import job


async def _take(broker, queue_name: str):  # type: ignore[no-untyped-def]
    consumer = broker.get_consumer(queue_name, max_unacked_messages=1)
    await consumer.start()
    try:
        return await asyncio.wait_for(consumer.consume(), 10.0), consumer
    except BaseException:
        await consumer.finish()
        raise


async def test_a_request_left_by_a_finished_job_does_not_cancel_a_later_job_with_its_id(
    conn, new_queue
):
    queue = await new_queue()
    broker = conn.raw_message_broker
    await job(conn, "work", queue, id_="reused-id").enqueue()
    delivery, consumer = await _take(broker, queue.name)
    try:
        assert await broker.cancel(queue.name, "reused-id") == "requested"
        assert await broker.ack(delivery)  # it finished before a worker read the request
    finally:
        await consumer.finish()

    await job(conn, "work", queue, id_="reused-id").enqueue()
    delivery, consumer = await _take(broker, queue.name)
    try:
        assert await broker.cancelled_ids(["reused-id"]) == set()
        assert await broker.ack(delivery)
    finally:
        await consumer.finish()


async def test_a_request_for_a_running_job_is_seen_until_it_settles(conn, new_queue):
    queue = await new_queue()
    broker = conn.raw_message_broker
    await job(conn, "work", queue, id_="running-id").enqueue()
    delivery, consumer = await _take(broker, queue.name)
    try:
        assert await broker.cancel(queue.name, "running-id") == "requested"
        assert await broker.cancelled_ids(["running-id", "other"]) == {"running-id"}
        assert await broker.ack(delivery)
    finally:
        await consumer.finish()
