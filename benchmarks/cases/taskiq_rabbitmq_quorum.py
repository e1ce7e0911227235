"""taskiq-aio-pika, RabbitMQ quorum queues: the `taskiq_rabbitmq.py` case with the task and
dead-letter queues declared `Queue(type=QueueType.QUORUM)` explicitly; worker
`max_async_tasks=C`, broker `qos=C`.

Runs in the taskiq-aio-pika virtualenv. See `_common.NetCase` for the phases and what is printed.
"""

from __future__ import annotations

import taskiq_rabbitmq
from taskiq_aio_pika import AioPikaBroker
from taskiq_aio_pika.exchange import Exchange
from taskiq_aio_pika.queue import Queue, QueueType
from taskiq_rabbitmq import TaskiqRabbitCase


def make_broker(queue: str, qos: int = 10) -> AioPikaBroker:
    return AioPikaBroker(
        taskiq_rabbitmq.AMQP_URL,
        qos=qos,
        exchange=Exchange(name=queue),
        task_queues=[Queue(name=queue, type=QueueType.QUORUM)],
        dead_letter_queue=Queue(name=f"{queue}.dead_letter", type=QueueType.QUORUM),
    )


class TaskiqQuorumCase(TaskiqRabbitCase):
    case = "taskiq-aio-pika-quorum"
    guarantees = (
        "quorum queues (replicated, always persistent); publisher confirms ON (aio-pika "
        "channel default); ack when the result is saved"
    )


if __name__ == "__main__":
    taskiq_rabbitmq.make_broker = make_broker  # the base case builds its brokers through it
    TaskiqQuorumCase().main()
