"""Each broker declares exactly the capabilities the suite expects of it, and the protocol."""

from __future__ import annotations

import pytest

from repid import BrokerCapabilities, ConsumerT, MessageBrokerT
from repid.brokers.base import (
    actor_limits_of,
    cancellation_of,
    event_bus_of,
    inspection_of,
    liveness_of,
    worker_registry_of,
)

from .conftest import BOOLEAN_CAPABILITIES


async def test_declared_capabilities_match_the_broker_table(conn, broker_spec):
    caps = conn.message_broker.capabilities
    assert isinstance(caps, BrokerCapabilities)
    declared = {name for name in BOOLEAN_CAPABILITIES if getattr(caps, name)}
    assert declared == set(broker_spec.capabilities)
    if caps.lease_renewal:
        assert caps.lease_duration is not None
        assert caps.lease_duration > 0


async def test_broker_and_consumer_implement_the_protocol(conn, new_queue):
    queue = await new_queue()
    broker = conn.message_broker
    assert isinstance(broker, MessageBrokerT)
    consumer = broker.get_consumer(queue.name)
    assert isinstance(consumer, ConsumerT)


async def test_each_declared_feature_is_implemented(conn):
    broker = conn.raw_message_broker
    caps = broker.capabilities
    for declared, found in (
        (caps.cancellation, cancellation_of(broker)),
        (caps.worker_registry, worker_registry_of(broker)),
        (caps.actor_limits, actor_limits_of(broker)),
        (caps.inspection, inspection_of(broker)),
        (caps.liveness, liveness_of(broker)),
        (caps.event_bus, event_bus_of(broker)),
    ):
        assert (found is broker) if declared else (found is None)


def test_a_declared_feature_that_is_missing_is_a_type_error():
    class Pretender:
        capabilities = BrokerCapabilities(cancellation=True)

    with pytest.raises(TypeError, match="declares cancellation but does not implement"):
        cancellation_of(Pretender())  # type: ignore[arg-type]
    assert worker_registry_of(Pretender()) is None  # type: ignore[arg-type]
