"""The Kafka consumer's in-process buffer, without a server: what `_pop` hands out."""

from __future__ import annotations

from aiokafka.structs import TopicPartition

from repid import KafkaMessageBroker, MessageCategory
from repid.brokers.base import Delivery
from repid.brokers.kafka.consumer import KafkaConsumer, _Handle, _Partition
from repid.data import Parameters, RoutingKey


def _consumer() -> KafkaConsumer:
    broker = KafkaMessageBroker("127.0.0.1:1", topic_prefix="unit.")
    return KafkaConsumer(broker, "q", None, None, MessageCategory.NORMAL)


def _buffer(consumer: KafkaConsumer, part: _Partition, offset: int, priority: int) -> None:
    key = RoutingKey(f"id-{offset}", "actor", "q", priority)
    handle = _Handle(consumer, part, offset)
    consumer._ready[priority].append(Delivery(key, "{}", Parameters(), handle))
    consumer._buffered += 1
    part.pending.append(offset)


def test_a_stale_delivery_does_not_hide_the_rest_of_its_priority() -> None:
    consumer = _consumer()
    old = _Partition(TopicPartition("unit.q", 0))
    fresh = _Partition(TopicPartition("unit.q", 1))
    _buffer(consumer, old, 0, 0)
    _buffer(consumer, fresh, 0, 0)
    _buffer(consumer, fresh, 1, 1)
    old.revoked = True  # e.g. taken by a rebalance after these were buffered

    first = consumer._pop()
    second = consumer._pop()

    assert first is not None
    assert first.handle.part is fresh
    assert first.key.priority == 0
    assert second is not None
    assert second.key.priority == 1
    assert consumer._pop() is None
    assert consumer._buffered == 0
    assert fresh.running == 2
    assert not fresh.drained.is_set()
