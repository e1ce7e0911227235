"""The RabbitMQ broker (aio-pika/aiormq). Needs `pip install repid[rabbitmq]`."""

from __future__ import annotations

from repid.brokers.rabbitmq.broker import RabbitMessageBroker

__all__ = ["RabbitMessageBroker"]
