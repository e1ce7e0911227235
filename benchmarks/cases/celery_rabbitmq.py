"""Celery, RabbitMQ (py-amqp): `noop.delay(i)` (synchronous); worker `--pool threads
--concurrency C`. The same script as `celery_redis.py`, on the AMQP transport.

Runs in the celery virtualenv. See `celery_redis.py` and `_common.NetCase`.
"""

from __future__ import annotations

import os

from _common import AMQP_URL

os.environ["REPID_BENCH_CELERY_BROKER"] = AMQP_URL

from celery_redis import CeleryCase
from kombu import Connection


class CeleryRabbitCase(CeleryCase):
    guarantees = (
        "publisher confirms OFF (kombu default), messages persistent (delivery_mode=2), durable "
        "queue; ack on receipt (Celery's default acks_late=False)"
    )

    async def cleanup(self, queues: list[str]) -> None:
        with Connection(AMQP_URL) as connection:
            channel = connection.channel()
            for name in queues:
                channel.queue_delete(name)
                channel.exchange_delete(name)


if __name__ == "__main__":
    CeleryRabbitCase().main()
