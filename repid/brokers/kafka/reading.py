"""Reading a queue's topics without joining its group: browsing (`get_messages`), end
offsets (`flush`) and message counts (`counts`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from repid.brokers.base import Delivery
from repid.brokers.kafka._compat import refresh_metadata
from repid.brokers.kafka.records import decode_record, matches, removal_of
from repid.data import MessageCategory
from repid.errors import BrokerUnavailableError, map_broker_errors

__all__ = ["UNREACHABLE", "TopicsHost", "end_offsets", "queue_counts", "read_topic"]

UNREACHABLE = (TimeoutError, KafkaError, OSError)
"""What aiokafka raises when it cannot reach the cluster (or gives up waiting for it)."""


class TopicsHost(Protocol):
    """What reading needs of the broker: names, timeouts, client options, its admin client."""

    @property
    def connect_timeout(self) -> float: ...

    @property
    def operation_timeout(self) -> float: ...

    @property
    def max_message_size(self) -> int: ...

    def topic(self, queue_name: str, category: MessageCategory = MessageCategory.NORMAL) -> str:
        """The topic of one part of a queue."""
        ...

    def group(self, queue_name: str) -> str:
        """The consumer group of a queue."""
        ...

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for every aiokafka client (servers, security, backoff)."""
        ...

    def require_admin(self) -> AIOKafkaAdminClient:
        """The started admin client (`BrokerUnavailableError` when not connected)."""
        ...


@contextlib.asynccontextmanager
async def _reader(host: TopicsHost) -> AsyncIterator[AIOKafkaConsumer]:
    reader = AIOKafkaConsumer(
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=50,
        request_timeout_ms=max(40_000, int(host.operation_timeout * 1000)),
        **host.client_kwargs(),
    )
    try:
        with map_broker_errors({UNREACHABLE: BrokerUnavailableError}, "reaching Kafka"):
            await asyncio.wait_for(reader.start(), host.connect_timeout)
    except BaseException:
        with contextlib.suppress(Exception):
            await reader.stop()
        raise
    try:
        yield reader
    finally:
        await reader.stop()


async def _partitions(reader: AIOKafkaConsumer, topics: list[str]) -> list[TopicPartition]:
    tps: list[TopicPartition] = []
    for topic in topics:
        parts = reader.partitions_for_topic(topic)
        if parts is None:
            await refresh_metadata(reader)
            parts = reader.partitions_for_topic(topic) or set()
        tps.extend(TopicPartition(topic, p) for p in sorted(parts))
    return tps


async def end_offsets(host: TopicsHost, topics: list[str]) -> dict[TopicPartition, int]:
    """The end offset of every partition of `topics`."""
    async with _reader(host) as reader:
        tps = await _partitions(reader, topics)
        if not tps:
            return {}
        ends: dict[TopicPartition, int] = await reader.end_offsets(tps)
        return ends


async def read_topic(
    host: TopicsHost, queue_name: str, category: MessageCategory
) -> list[Delivery]:
    """The messages now in one part of a queue, in order, without consuming them.

    NORMAL and DELAYED are read from the group's committed offsets, DEAD from the start.
    Removed records are left out; DELAYED lists only messages not due yet, each once.
    """
    topic = host.topic(queue_name, category)
    async with _reader(host) as reader:
        tps = await _partitions(reader, [topic])
        if not tps:
            return []
        reader.assign(tps)
        ends = await reader.end_offsets(tps)
        starts = await reader.beginning_offsets(tps)
        if category is not MessageCategory.DEAD:
            admin = host.require_admin()
            try:
                committed = await admin.list_consumer_group_offsets(
                    host.group(queue_name), partitions=tps
                )
            except KafkaError:
                committed = {}
            for tp, meta in committed.items():
                if meta is not None and meta.offset >= 0:
                    starts[tp] = max(starts.get(tp, 0), min(meta.offset, ends.get(tp, 0)))
        records: list[ConsumerRecord[Any, Any]] = []
        remaining = {tp for tp in tps if starts.get(tp, 0) < ends.get(tp, 0)}
        for tp in tps:
            reader.seek(tp, starts.get(tp, 0))
        deadline = time.monotonic() + host.operation_timeout
        while remaining and time.monotonic() < deadline:
            batches = await reader.getmany(*remaining, timeout_ms=100)
            for tp, batch in batches.items():
                records.extend(record for record in batch if record.offset < ends[tp])
                if batch and batch[-1].offset + 1 >= ends[tp]:
                    remaining.discard(tp)
    return _visible(records, queue_name, category, host.max_message_size)


def _visible(
    records: list[ConsumerRecord[Any, Any]],
    queue_name: str,
    category: MessageCategory,
    max_size: int | None = None,
) -> list[Delivery]:
    """The deliveries of `records` that no later marker removed (DELAYED: not due, once)."""
    deliveries: list[tuple[TopicPartition, int, Delivery]] = []
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        removal = removal_of(record)
        if removal is not None:
            deliveries = [
                entry
                for entry in deliveries
                if not (entry[0] == tp and entry[1] < record.offset and matches(removal, entry[2]))
            ]
            continue
        delivery = decode_record(record, queue_name, max_size=max_size)
        deliveries.append(
            (tp, record.offset, delivery._replace(handle=(tp, record.offset), category=category))
        )
    out = [entry[2] for entry in deliveries]
    if category is MessageCategory.DELAYED:
        now = time.time()
        latest: dict[tuple[str, float], Delivery] = {}
        for delivery in out:
            due = delivery.parameters.not_before
            if due is not None and due > now:
                latest[(delivery.key.id_, delivery.parameters.timer.timestamp.timestamp())] = (
                    delivery
                )
        out = sorted(latest.values(), key=lambda d: d.parameters.not_before or 0.0)
    elif category is MessageCategory.NORMAL:
        out = [
            d
            for d in out
            if d.decode_error is not None or (d.parameters.not_before or 0.0) <= time.time() + 1e9
        ]
    return out


async def queue_counts(host: TopicsHost, queue_name: str, running: int) -> dict[str, int]:
    """Offset arithmetic over a queue's topics; `running`: messages running in this process
    (see `KafkaMessageBroker.counts`)."""
    topics = [host.topic(queue_name, category) for category in MessageCategory]
    async with _reader(host) as reader:
        tps = await _partitions(reader, topics)
        ends = await reader.end_offsets(tps)
        starts = await reader.beginning_offsets(tps)
    try:
        committed = await host.require_admin().list_consumer_group_offsets(
            host.group(queue_name), partitions=tps
        )
    except KafkaError:
        committed = {}
    sizes = dict.fromkeys(topics, 0)
    for tp in tps:
        start = starts.get(tp, 0)
        meta = committed.get(tp)
        if tp.topic != topics[2] and meta is not None and meta.offset >= 0:
            start = max(start, meta.offset)
        sizes[tp.topic] += max(0, ends.get(tp, 0) - start)
    return {
        "ready": max(0, sizes[topics[0]] - running),
        "delayed": sizes[topics[1]],
        "in_flight": running,
        "dead": sizes[topics[2]],
    }
