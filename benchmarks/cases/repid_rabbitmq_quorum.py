"""repid, RabbitMessageBroker(queue_type="quorum"): the `repid_rabbitmq.py` case on quorum
queues (one per priority); worker `Worker(tasks_limit=C)` in a fresh process.
"""

from __future__ import annotations

from _common import AMQP_URL
from _repid_net import RepidNetCase

from repid import RabbitMessageBroker


def make_broker(queue: str) -> RabbitMessageBroker:
    return RabbitMessageBroker(AMQP_URL, queue_type="quorum")


class RepidQuorumCase(RepidNetCase):
    case = "repid-quorum"


if __name__ == "__main__":
    RepidQuorumCase(
        make_broker,
        guarantees="quorum queues (replicated, always persistent), one per priority; "
        "publisher confirms ON; ack after the actor ran",
    ).main()
