"""The Kafka broker (aiokafka). Needs `pip install repid[kafka]`."""

from __future__ import annotations

from repid.brokers.kafka.broker import KafkaMessageBroker

__all__ = ["KafkaMessageBroker"]
