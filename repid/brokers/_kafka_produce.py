"""A shorter path for a lone `send()` through aiokafka's idempotent producer.

aiokafka hands every message to its sender task: `send()` appends to a batch, the sender task
wakes, drains the batch, starts a task for the produce request, and that task resolves the
message's future when the response arrives. That is four task switches per message, most of a
sequential `enqueue()`'s client time.

`direct_send()` does the same work in the caller's own task when the partition is idle (no batch
waiting or in flight for it and no lingering wanted): it builds the batch with the accumulator's
own classes, gives it the next sequence number exactly as the accumulator does when it drains,
mutes the partition in the sender (so nothing of that partition overtakes it) and runs aiokafka's
own produce-request handler. Whatever that handler does not finish (a retriable error) it puts
back into the accumulator for the sender to retry, with the same sequence number, as the sender
would; a caller cancelled meanwhile (a timeout) leaves its batch to the sender too. Messages to
a busy partition take aiokafka's usual path.

It relies on aiokafka internals; `usable()` checks that they are there, and callers use
`AIOKafkaProducer.send()` when it says no.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition

try:
    from aiokafka.producer.message_accumulator import MessageBatch
    from aiokafka.producer.sender import SendProduceReqHandler
except ImportError:  # pragma: no cover - a future aiokafka
    MessageBatch = SendProduceReqHandler = None

__all__ = ["direct_send", "usable"]

_ACCUMULATOR = ("_batches", "_pop_batch", "create_builder", "reenqueue", "_waiter_future")
_ACCUMULATOR_SETTINGS = ("_batch_ttl", "_linger_time", "_exception", "_closed")


def usable(producer: AIOKafkaProducer) -> bool:
    """The producer is idempotent, not transactional, does not linger, and has the internals."""
    if MessageBatch is None or SendProduceReqHandler is None:
        return False  # pragma: no cover
    acc: Any = getattr(producer, "_message_accumulator", None)
    sender: Any = getattr(producer, "_sender", None)
    txn: Any = getattr(producer, "_txn_manager", None)
    if acc is None or sender is None or txn is None:
        return False
    if not all(hasattr(acc, name) for name in _ACCUMULATOR + _ACCUMULATOR_SETTINGS):
        return False
    if not hasattr(sender, "_muted_partitions") or not hasattr(txn, "has_pid"):
        return False
    if not all(hasattr(producer, name) for name in ("_partition", "_metadata", "_serialize")):
        return False
    return getattr(txn, "transactional_id", True) is None and not acc._linger_time


async def direct_send(
    producer: AIOKafkaProducer,
    topic: str,
    value: bytes,
    headers: list[tuple[str, bytes]],
    partition: int | None,
) -> asyncio.Future[Any] | None:
    """Send one record in this task; None if the partition is busy (use `producer.send()`).

    `partition=None` picks one with the producer's partitioner (as `send()` does). Returns the
    record's future, done unless aiokafka's sender retries the batch.
    """
    internal: Any = producer
    acc = internal._message_accumulator
    sender = internal._sender
    txn = internal._txn_manager
    internal._serialize(None, value, headers)  # raises MessageSizeTooLargeError as send() does
    if partition is None:
        if not internal._metadata.partitions_for_topic(topic):
            return None  # metadata not known yet: `send()` waits for it
        partition = internal._partition(topic, None, None, value, None, value)
    tp = TopicPartition(topic, partition)
    leader = internal.client.cluster.leader_for_partition(tp)
    if (
        leader is None
        or leader < 0
        or tp in acc._batches
        or tp in sender._muted_partitions
        or acc._exception is not None
        or acc._closed
        or not txn.has_pid()
        or sender.sender_task is None
        or sender.sender_task.done()
    ):
        return None
    batch = MessageBatch(tp, acc.create_builder(), acc._batch_ttl, acc._linger_time)
    future: asyncio.Future[Any] | None = batch.append(None, value, None, headers=headers)
    if future is None:  # larger than a batch: aiokafka's path says why
        return None
    acc._batches[tp].append(batch)
    batch = acc._pop_batch(tp)  # the next sequence number, as the sender's drain would
    sender._muted_partitions.add(tp)
    try:
        await SendProduceReqHandler(sender, {tp: batch}).do(leader)
    except BaseException:
        # Cancelled mid-request: the sender delivers the batch, with its sequence number
        # (the server answers a copy it already has as a duplicate, which counts as done).
        if not batch.future.done() and batch not in acc._batches.get(tp, ()):
            acc.reenqueue(batch)
        raise
    finally:
        sender._muted_partitions.discard(tp)
        if tp in acc._batches and not acc._waiter_future.done():
            acc._waiter_future.set_result(None)  # wake the sender for what waited meanwhile
    return future
