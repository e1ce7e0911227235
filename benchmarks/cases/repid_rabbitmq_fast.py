"""repid, RabbitMessageBroker with the run's queue in `fast_queues`: transient messages and no
wait for the publisher confirm (the delivery mode Dramatiq and Celery use by default, minus
persistence). A variant of `repid_rabbitmq.py`, reported beside it, not a peer.
"""

from __future__ import annotations

from _common import AMQP_URL
from _repid_net import RepidNetCase

from repid import RabbitMessageBroker


def make_broker(queue: str) -> RabbitMessageBroker:
    return RabbitMessageBroker(AMQP_URL, fast_queues=[queue])


class RepidFastCase(RepidNetCase):
    case = "repid-fast"


if __name__ == "__main__":
    RepidFastCase(
        make_broker,
        guarantees="publisher confirms OFF, messages transient (fast_queues), durable queues; ack "
        "after the actor ran",
    ).main()
