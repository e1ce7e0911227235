"""Each broker declares exactly the capabilities the suite expects of it, and the protocol."""

from __future__ import annotations

from repid import BrokerCapabilities, ConsumerT, MessageBrokerT

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
