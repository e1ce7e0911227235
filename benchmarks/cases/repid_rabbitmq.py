"""repid, RabbitMessageBroker: `await Job("noop", queue=q, args={"n": i}).enqueue()`;
worker `Worker(tasks_limit=C)` in a fresh process. See `_common.NetCase` and `_repid_net.py`.
"""

from __future__ import annotations

from _common import AMQP_URL
from _repid_net import RepidNetCase

from repid import RabbitMessageBroker


def make_broker(queue: str) -> RabbitMessageBroker:
    return RabbitMessageBroker(AMQP_URL)


if __name__ == "__main__":
    RepidNetCase(
        make_broker,
        guarantees="publisher confirms ON, messages persistent, durable queues; ack after the "
        "actor ran",
    ).main()
